"""What simulated customers of four industries do, stage by stage.

A scenario names, for each journey it drives, how a customer reaches every stage (the touchpoints
that match it), how likely customers are to stop there or to miss the stage's deadline and come
back later, and the pain and love signals they may meet on the way. Every touchpoint here is made
to match exactly what ``deploy/journeys.example.yaml`` (and the short-timeout
``deploy/journeys.demo.yaml``) expect, and the noise matches no stage and no signal, so what a
simulated customer goes through is known by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Channels that a person's own device sends from; every other channel is a back-office system
# (store till, call centre, courier scanner, branch, reception) that knows the customer's userId.
DEVICE_CHANNELS = ("web", "app")


@dataclass(frozen=True)
class Step:
    """One kind of touchpoint a customer can produce."""

    name: str  # the event name (track) or the page name (page)
    type: str = "track"
    channel: str = ""  # "" = whichever of the customer's devices; else web, app or back office
    props: tuple[tuple[str, Any], ...] = ()
    signal: str = ""  # the pain or love signal this touchpoint shows, by construction

    @property
    def offline(self) -> bool:
        return bool(self.channel) and self.channel not in DEVICE_CHANNELS

    def properties(self) -> dict[str, Any]:
        return dict(self.props)


@dataclass(frozen=True)
class StagePlan:
    stage: str
    steps: tuple[Step, ...]  # the ways to enter this stage; one is picked per customer
    drop: float = 0.0  # chance of stopping at this stage (the last stage has none)
    stall: float = 0.0  # chance of missing its deadline and moving on later (a recovery)
    pain: tuple[Step, ...] = ()
    pain_chance: float = 0.0
    love: tuple[Step, ...] = ()
    love_chance: float = 0.0


@dataclass(frozen=True)
class JourneyPlan:
    journey: str
    stages: tuple[StagePlan, ...]
    login_level: int  # customers identify themselves before entering this level


@dataclass(frozen=True)
class Scenario:
    name: str
    journey: JourneyPlan
    noise: tuple[Step, ...]
    # A journey whose first stage is entered by the touchpoint that converts the main one,
    # when that touchpoint has this name (an online order opens the delivery journey).
    follow_on: JourneyPlan | None = None
    follow_on_step: str = ""
    pain_boost: float = 2.5  # a pain signal multiplies the chance of stopping at that stage
    love_damp: float = 0.5  # a love signal multiplies it by this


def _p(**props: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(props.items())


# The scenario tables read best laid out by hand.
# fmt: off
ECOMMERCE = Scenario(
    name="ecommerce",
    journey=JourneyPlan(
        "ecommerce_purchase",
        (
            StagePlan(
                "product",
                (Step("Product Viewed", props=_p(sku="SKU-1042", price=59.0)),
                 Step("Product Detail", type="page", channel="web", props=_p(path="/p/1042"))),
                drop=0.35, stall=0.08,
                pain=(Step("Products Searched", props=_p(query="red shoes", results=0),
                           signal="search_no_results"),
                      Step("Page Loaded", props=_p(load_ms=4800), signal="slow_page")),
                pain_chance=0.3,
            ),
            StagePlan(
                "cart", (Step("Product Added", props=_p(sku="SKU-1042", quantity=1)),),
                drop=0.3, stall=0.1,
                pain=(Step("Shipping Cost Shown", props=_p(free_shipping=False, cost=6.9),
                           signal="shipping_cost_shock"),),
                pain_chance=0.35,
            ),
            StagePlan(
                "checkout", (Step("Checkout Started", props=_p(value=59.0)),),
                drop=0.2, stall=0.1,
                pain=(Step("Payment Failed", props=_p(method="card", code="declined"),
                           signal="payment_failed"),
                      Step("Feedback Given", props=_p(score=1), signal="low_rating")),
                pain_chance=0.25,
                love=(Step("Payment Method Selected", props=_p(method="wallet"),
                           signal="fast_payment"),),
                love_chance=0.3,
            ),
            StagePlan(
                "purchase",
                (Step("Order Completed", props=_p(order_id="o", total=59.0)),
                 Step("Purchase", channel="store", props=_p(till=7, total=59.0))),
            ),
        ),
        login_level=3,
    ),
    follow_on=JourneyPlan(
        "ecommerce_delivery",
        (
            StagePlan("ordered", (), drop=0.1, stall=0.1,
                      pain=(Step("Shipment Tracked", props=_p(carrier="dhl"),
                                 signal="tracking_checked_often"),),
                      pain_chance=0.3),
            StagePlan("shipped",
                      (Step("Order Shipped", channel="courier", props=_p(carrier="dhl")),),
                      drop=0.1, stall=0.15,
                      pain=(Step("Delivery Problem", channel="courier", props=_p(kind="damaged"),
                                 signal="damaged_parcel"),
                            Step("Complaint", channel="call_center", props=_p(topic="late"),
                                 signal="complaint_call")),
                      pain_chance=0.3),
            StagePlan("delivered",
                      (Step("Order Delivered", channel="courier", props=_p(carrier="dhl")),)),
        ),
        login_level=1,
    ),
    follow_on_step="Order Completed",
    noise=(
        Step("Products Searched", props=_p(query="shoes", results=24)),
        Step("Page Loaded", props=_p(load_ms=640)),
        Step("Feedback Given", props=_p(score=3)),
        Step("Newsletter Opened", props=_p(campaign="spring")),
    ),
)

BANKING = Scenario(
    name="banking",
    journey=JourneyPlan(
        "banking_account_opening",
        (
            StagePlan("offer", (Step("Accounts Savings", type="page", channel="web",
                                     props=_p(path="/accounts/savings")),),
                      drop=0.4, stall=0.08,
                      pain=(Step("Call Ended", channel="call_center", props=_p(wait_s=540),
                                 signal="hotline_wait"),),
                      pain_chance=0.2),
            StagePlan("application", (Step("Application Started", props=_p(product="savings")),),
                      drop=0.3, stall=0.1,
                      pain=(Step("Call Ended", channel="call_center", props=_p(wait_s=540),
                                 signal="hotline_wait"),),
                      pain_chance=0.3),
            StagePlan("identity_check", (Step("Identity Verified", props=_p(method="video")),),
                      drop=0.25, stall=0.15,
                      pain=(Step("Identity Check Failed", props=_p(reason="blurry"),
                                 signal="verification_failed"),
                            Step("Error Shown", channel="app", props=_p(code="E42"),
                                 signal="app_error")),
                      pain_chance=0.35,
                      love=(Step("Chat Resolved", props=_p(by="bot"), signal="chatbot_solved"),),
                      love_chance=0.3),
            StagePlan("opened", (Step("Account Opened", props=_p(product="savings")),
                                 Step("Account Opened", channel="branch",
                                      props=_p(branch="B-12")))),
        ),
        login_level=2,
    ),
    noise=(
        Step("Rates Compared", props=_p(products=3)),
        Step("Call Ended", channel="call_center", props=_p(wait_s=40)),
        Step("Chat Resolved", props=_p(by="agent")),
    ),
)

TELECOM = Scenario(
    name="telecom",
    journey=JourneyPlan(
        "telecom_plan_change",
        (
            StagePlan("offer", (Step("Offers Mobile", type="page", channel="web",
                                     props=_p(path="/offers/mobile")),),
                      drop=0.4, stall=0.1,
                      pain=(Step("Faq Viewed", props=_p(topic="pricing"), signal="price_unclear"),
                            Step("Social Mention", channel="social",
                                 props=_p(sentiment="negative"), signal="negative_social")),
                      pain_chance=0.3),
            StagePlan("plan_selected", (Step("Plan Selected", props=_p(plan="unlimited-5g")),),
                      drop=0.25, stall=0.1,
                      pain=(Step("Store Visit", channel="store", props=_p(wait_min=25),
                                 signal="store_queue"),),
                      pain_chance=0.3),
            StagePlan("contract_signed", (Step("Contract Signed", props=_p(months=24)),
                                          Step("Contract Signed", channel="store",
                                               props=_p(months=24))),
                      drop=0.15, stall=0.15,
                      pain=(Step("Faq Viewed", props=_p(topic="pricing"), signal="price_unclear"),),
                      pain_chance=0.25),
            StagePlan("activated", (Step("Service Activated", channel="network",
                                         props=_p(sim="esim")),)),
        ),
        login_level=2,
    ),
    noise=(
        Step("Faq Viewed", props=_p(topic="roaming")),
        Step("Store Visit", channel="store", props=_p(wait_min=4)),
        Step("Social Mention", channel="social", props=_p(sentiment="positive")),
    ),
)

HOSPITALITY = Scenario(
    name="hospitality",
    journey=JourneyPlan(
        "hospitality_stay",
        (
            StagePlan("booking_page", (Step("Booking Rooms", type="page", channel="web",
                                             props=_p(path="/booking/rooms")),),
                      drop=0.45, stall=0.08,
                      pain=(Step("Feedback Given", props=_p(score=2), signal="low_rating"),),
                      pain_chance=0.15,
                      love=(Step("Loyalty Points Earned", props=_p(points=200),
                                 signal="loyalty_points"),),
                      love_chance=0.2),
            StagePlan("booked", (Step("Booking Confirmed", props=_p(nights=2)),),
                      drop=0.1, stall=0.1,
                      pain=(Step("Room Issue Reported", channel="call_center",
                                 props=_p(kind="wrong dates"), signal="room_issue"),),
                      pain_chance=0.15),
            StagePlan("checked_in", (Step("Checked In", channel="reception",
                                          props=_p(wait_min=4)),),
                      drop=0.05, stall=0.1,
                      pain=(Step("Room Issue Reported", channel="reception", props=_p(kind="noise"),
                                 signal="room_issue"),),
                      pain_chance=0.25,
                      love=(Step("Concierge Request", channel="reception",
                                 props=_p(resolved=True), signal="concierge_helped"),),
                      love_chance=0.3),
            StagePlan("checked_out", (Step("Checked Out", channel="reception",
                                           props=_p(total=320.0)),),
                      drop=0.5, stall=0.1,
                      pain=(Step("Feedback Given", props=_p(score=1), signal="low_rating"),),
                      pain_chance=0.2),
            StagePlan("reviewed", (Step("Review Posted", props=_p(stars=4)),)),
        ),
        login_level=2,
    ),
    noise=(
        Step("Feedback Given", props=_p(score=3)),
        Step("Concierge Request", channel="reception", props=_p(resolved=False)),
        Step("Spa Viewed", props=_p(path="/spa")),
    ),
)

# fmt: on

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (ECOMMERCE, BANKING, TELECOM, HOSPITALITY)}
# The mix: how often a simulated customer comes from each industry.
MIX: dict[str, float] = {"ecommerce": 0.4, "banking": 0.2, "telecom": 0.2, "hospitality": 0.2}


def scenario_names() -> list[str]:
    return [*SCENARIOS, "mix"]
