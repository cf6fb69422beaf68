import gc

import pytest

from streams import collection


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_turns_collections_off_inside_and_back_on_after(collector_on):
    with collection.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_paused_nested_leaves_them_off_until_the_outermost_ends(collector_on):
    with collection.paused():
        with collection.paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_paused_turns_them_back_on_when_the_work_raises(collector_on):
    with pytest.raises(ValueError), collection.paused():
        raise ValueError("bad batch")
    assert gc.isenabled()


def test_paused_leaves_them_off_when_they_were_off():
    was = gc.isenabled()
    gc.disable()
    try:
        with collection.paused():
            pass
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()
