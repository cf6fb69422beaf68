"""Journey definitions and the rules that move customers through them."""
