"""The fair order (tasks/fair.py's Lua script) against the real Redis: which waiting task a
freed slot goes to. Tenants are plain ids here; no task rows are needed to pick."""

from __future__ import annotations

import itertools

import pytest

from tasks import fair

ACME, GLOBEX, INITECH = 1, 2, 3  # companies
ACME_WEB, ACME_BATCH, GLOBEX_WEB, INITECH_WEB = 11, 12, 21, 31  # apps
COMPANY_OF = {ACME_WEB: ACME, ACME_BATCH: ACME, GLOBEX_WEB: GLOBEX, INITECH_WEB: INITECH}
_clock = itertools.count(1_000_000)


def fixed(tokens: int) -> fair.FairCost:
    """A cost charged as it is (as a task's max_tokens is), no prompt part."""
    return fair.FairCost(prompt=0, answer=tokens, answer_capped=True)


@pytest.fixture
def window(settings, private_queue):
    """Fair keys of this test's own (they live under its queue); returns a setter of the window."""

    def set_(size: int) -> None:
        settings.MAGEAGENT = {**settings.MAGEAGENT, "FAIR_WINDOW": size, "FAIR_WINDOW_MIN": size}

    set_(1)
    return set_


def admit(task_id: str, app: int, *, cost: int | fair.FairCost = 100, priority: int = 0, since_ms: int | None = None,
          config: fair.FairConfig | None = None) -> list[str]:
    picked = fair.fair_admit(task_id=task_id, company_id=COMPANY_OF[app], app_id=app,
                             cost=fixed(cost) if isinstance(cost, int) else cost, priority=priority,
                             since_ms=next(_clock) if since_ms is None else since_ms,
                             config=config or fair.FairConfig())
    return [task_id for task_id, _ in picked]


def run_in_turn(first: str, count: int) -> list[str]:
    """With a window of one: each pickup frees the slot for the next pick."""
    order, current = [first], first
    for _ in range(count - 1):
        picked = fair.fair_started(task_id=current)
        if not picked:
            break
        current = picked[0][0]
        order.append(current)
    return order


def test_a_task_is_sent_at_once_when_nothing_waits(window):
    window(8)

    assert admit("a1", ACME_WEB) == ["a1"]
    assert admit("a2", ACME_WEB) == ["a2"]


def test_the_window_holds_tasks_back_until_a_worker_takes_one(window):
    window(2)
    sent = [admit(f"a{i}", ACME_WEB) for i in range(4)]

    assert sent == [["a0"], ["a1"], [], []]
    assert [t for t, _ in fair.fair_started(task_id="a0")] == ["a2"]


def test_an_idle_companys_first_task_goes_next_however_long_the_floods_backlog(window):
    first = admit("flood-0", ACME_WEB)[0]
    for i in range(1, 50):
        admit(f"flood-{i}", ACME_WEB)
    admit("globex-1", GLOBEX_WEB)

    assert run_in_turn(first, 2) == ["flood-0", "globex-1"]


def test_companies_at_equal_weights_take_turns(window):
    first = admit("a1", ACME_WEB)[0]
    for i in range(2, 5):
        admit(f"a{i}", ACME_WEB)
    for i in range(1, 5):
        admit(f"g{i}", GLOBEX_WEB)

    assert run_in_turn(first, 8) == ["a1", "g1", "a2", "g2", "a3", "g3", "a4", "g4"]


def test_three_companies_share_in_proportion_to_their_weights(window):
    configs = {ACME_WEB: fair.FairConfig(company_weight=3), GLOBEX_WEB: fair.FairConfig(company_weight=2),
               INITECH_WEB: fair.FairConfig(company_weight=1)}
    first = admit("x", ACME_WEB, config=configs[ACME_WEB])[0]
    for app, prefix in ((ACME_WEB, "a"), (GLOBEX_WEB, "g"), (INITECH_WEB, "i")):
        for i in range(30):
            admit(f"{prefix}{i}", app, config=configs[app])

    served = run_in_turn(first, 60)  # acme's first task among them

    counts = [sum(1 for t in served if t[0] == p) + (p == "a" and served[0] == "x") for p in "agi"]
    assert counts == [30, 20, 10]


def test_a_company_of_long_tasks_gets_as_many_tokens_not_as_many_tasks(window):
    first = admit("long-0", ACME_WEB, cost=1000)[0]
    for i in range(1, 10):
        admit(f"long-{i}", ACME_WEB, cost=1000)
    for i in range(100):
        admit(f"short-{i}", GLOBEX_WEB, cost=100)

    served = run_in_turn(first, 44)
    long_tokens = 1000 * sum(1 for t in served if t.startswith("long"))
    short_tokens = 100 * sum(1 for t in served if t.startswith("short"))

    assert long_tokens == short_tokens == 4000  # 4 long tasks, 40 short ones


def test_the_actual_tokens_of_an_ended_task_are_charged_instead_of_its_estimate(window):
    window(2)
    admit("a1", ACME_WEB, cost=100)
    admit("g1", GLOBEX_WEB, cost=100)
    for i in range(2, 6):
        admit(f"a{i}", ACME_WEB, cost=100)
        admit(f"g{i}", GLOBEX_WEB, cost=100)
    fair.fair_started(task_id="a1")  # the slot goes to the next pick: a2 (acme first on a tie)
    fair.fair_started(task_id="g1")  # g2
    # a1 used 500 tokens, not 100: acme owes 400 more, four of globex's turns.
    fair.fair_finished(task_id="a1", tokens=500)

    order = run_in_turn("a2", 6)

    assert order[1:] == ["g3", "g4", "g5", "a3", "a4"]


def test_a_task_without_max_tokens_is_expected_to_answer_as_long_as_its_apps_tasks_did(window):
    # A prompt of 10 tokens; the answer a guess (FAIR_DEFAULT_OUTPUT_TOKENS, 500) or a cap.
    guessed = fair.FairCost(prompt=10, answer=500, answer_capped=False)
    admit("g-history", GLOBEX_WEB, cost=guessed)
    fair.fair_started(task_id="g-history")
    fair.fair_finished(task_id="g-history", tokens=30)  # globex's web app answers in 20 tokens

    first = admit("a0", ACME_WEB, cost=guessed)[0]  # acme has no history: 510 expected
    for i in range(1, 3):
        admit(f"a{i}", ACME_WEB, cost=guessed)
    for i in range(40):
        admit(f"g{i}", GLOBEX_WEB, cost=guessed)  # 10 + 20 expected

    served = run_in_turn(first, 19)

    # Equal tokens: one of acme's 510-token tasks for each seventeen of globex's 30-token ones.
    assert [t for t in served if t.startswith("a")] == ["a0", "a1"]
    assert sum(1 for t in served if t.startswith("g")) == 17


def test_the_learned_answer_length_moves_with_each_ended_task(window):
    guessed = fair.FairCost(prompt=10, answer=500, answer_capped=False)
    for i, tokens in enumerate([110, 210]):  # answers of 100, then 200 tokens
        admit(f"h{i}", GLOBEX_WEB, cost=guessed)
        fair.fair_started(task_id=f"h{i}")
        fair.fair_finished(task_id=f"h{i}", tokens=tokens)
    from mageagent.redis import sync_client

    learned = sync_client().hget(fair.prefix() + "ans", str(GLOBEX_WEB))
    assert learned is not None and float(learned) == pytest.approx(120.0)


def test_an_idle_company_banks_no_credit_while_it_has_nothing_waiting(window):
    first = admit("a0", ACME_WEB)[0]
    for i in range(1, 20):
        admit(f"a{i}", ACME_WEB)
    served_alone = run_in_turn(first, 10)  # acme alone for ten picks
    for i in range(5):
        admit(f"g{i}", GLOBEX_WEB)

    after = run_in_turn(served_alone[-1], 7)[1:]

    # Globex starts at the current virtual time, not at zero: it alternates with acme rather
    # than taking ten turns in a row.
    assert after == ["g0", "a10", "g1", "a11", "g2", "a12"]


def test_apps_of_one_company_take_turns_within_the_companys_share(window):
    first = admit("w0", ACME_WEB)[0]
    for i in range(1, 5):
        admit(f"w{i}", ACME_WEB)
        admit(f"b{i}", ACME_BATCH)
        admit(f"g{i}", GLOBEX_WEB)

    served = run_in_turn(first, 9)

    # Acme's two apps split acme's half: web and batch alternate within it.
    assert served == ["w0", "g1", "b1", "g2", "w1", "g3", "b2", "g4", "w2"]


def test_within_an_app_a_higher_priority_goes_first_until_age_outweighs_it(window, settings):
    settings.MAGEAGENT = {**settings.MAGEAGENT, "FAIR_PRIORITY_AGING_MS": 1000}
    first = admit("running", ACME_WEB, since_ms=0)[0]
    admit("old-low", ACME_WEB, priority=0, since_ms=10_000)
    admit("young-high", ACME_WEB, priority=5, since_ms=12_000)  # 2 s younger, 5 s of priority
    admit("much-younger-high", ACME_WEB, priority=5, since_ms=30_000)  # 20 s younger: age wins

    assert run_in_turn(first, 4) == ["running", "young-high", "old-low", "much-younger-high"]


def test_a_company_at_its_in_flight_limit_waits_while_others_go(window):
    window(8)
    limited = fair.FairConfig(company_max_in_flight=2)
    sent = [t for i in range(4) for t in admit(f"a{i}", ACME_WEB, config=limited)]
    sent += admit("g0", GLOBEX_WEB)

    assert sent == ["a0", "a1", "g0"]
    fair.fair_started(task_id="a0")  # taken by a worker: still in flight
    assert fair.fair_pump() == []
    assert [t for t, _ in fair.fair_finished(task_id="a0", tokens=None)] == ["a2"]


def test_an_app_at_its_in_flight_limit_leaves_the_slot_to_its_companys_other_apps(window):
    window(8)
    limited = fair.FairConfig(app_max_in_flight=1)
    sent = [t for i in range(3) for t in admit(f"w{i}", ACME_WEB, config=limited)]
    sent += admit("b0", ACME_BATCH)

    assert sent == ["w0", "b0"]
    assert [t for t, _ in fair.fair_finished(task_id="w0", tokens=None)] == ["w1"]


def test_a_task_admitted_twice_is_sent_once(window):
    window(8)

    assert admit("a1", ACME_WEB) == ["a1"]
    assert admit("a1", ACME_WEB) == []  # sent and not yet taken
    window(1)
    admit("a2", ACME_WEB)
    assert admit("a2", ACME_WEB) == []  # waiting
    assert [t for t, _ in fair.fair_started(task_id="a1")] == ["a2"]
    assert fair.fair_started(task_id="a2") == []


def test_a_task_cancelled_while_waiting_leaves_its_queue(window):
    admit("a1", ACME_WEB)
    admit("a2", ACME_WEB)
    admit("a3", ACME_WEB)

    fair.fair_finished(task_id="a2", tokens=None)

    assert fair.fair_holding(["a1", "a2", "a3"]) == {"a1", "a3"}  # a1 sent, a3 waiting
    assert run_in_turn("a1", 3) == ["a1", "a3"]


def test_many_pumps_at_once_never_send_a_task_twice(window):
    from concurrent.futures import ThreadPoolExecutor

    window(4)
    ids = [f"t{i}" for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        sent = [t for batch in pool.map(lambda t: admit(t, ACME_WEB if t[-1] in "02468" else GLOBEX_WEB), ids)
                for t in batch]
        while len(sent) < len(ids):
            taken = sent[-4:]
            sent += [t for batch in pool.map(lambda t: [p for p, _ in fair.fair_started(task_id=t)], taken)
                     for t in batch]

    assert sorted(sent) == sorted(ids)


def test_late_tenants_go_before_the_rest_of_a_flood_whether_another_company_or_another_app(window):
    first = admit("a1", ACME_WEB)[0]
    for i in range(2, 7):
        admit(f"a{i}", ACME_WEB)
    fair.fair_started(task_id="a1")  # a2 sent
    for i in (1, 2):
        admit(f"b{i}", ACME_BATCH)
    for i in (1, 2):
        admit(f"g{i}", GLOBEX_WEB)

    # Globex and acme's batch app start at the current virtual time, half of acme's web app's.
    assert run_in_turn("a2", 8) == ["a2", "g1", "b1", "g2", "a3", "b2", "a4", "a5"]
    assert first == "a1"


def test_a_company_with_nothing_in_the_window_goes_to_the_head_of_the_brokers_queue(window):
    window(8)
    flood = [fair.fair_admit(task_id=f"a{i}", company_id=ACME, app_id=ACME_WEB, cost=fixed(100), priority=0,
                             since_ms=next(_clock), config=fair.FairConfig()) for i in range(3)]
    late = fair.fair_admit(task_id="g0", company_id=GLOBEX, app_id=GLOBEX_WEB, cost=fixed(100), priority=0,
                           since_ms=next(_clock), config=fair.FairConfig())
    second = fair.fair_admit(task_id="g1", company_id=GLOBEX, app_id=GLOBEX_WEB, cost=fixed(100), priority=0,
                             since_ms=next(_clock), config=fair.FairConfig())

    # Sent at their own priority, except globex's while it holds fewer of the window's tasks
    # than acme: the top. Once it holds as many, its next goes at its own priority.
    assert [p for batch in flood for _, p in batch] == [0, 0, 0]
    assert late == [("g0", 9)] and second == [("g1", 9)]
    third = fair.fair_admit(task_id="g2", company_id=GLOBEX, app_id=GLOBEX_WEB, cost=fixed(100), priority=0,
                            since_ms=next(_clock), config=fair.FairConfig())
    fourth = fair.fair_admit(task_id="g3", company_id=GLOBEX, app_id=GLOBEX_WEB, cost=fixed(100), priority=0,
                             since_ms=next(_clock), config=fair.FairConfig())
    assert third == [("g2", 9)] and fourth == [("g3", 0)]  # three of globex's against acme's three
    for task_id in ("a0", "a1", "a2"):
        fair.fair_started(task_id=task_id)
    assert fair.fair_admit(task_id="a3", company_id=ACME, app_id=ACME_WEB, cost=fixed(100), priority=0,
                           since_ms=next(_clock), config=fair.FairConfig()) == [("a3", 9)]


def test_the_window_grows_with_the_tasks_in_flight_between_its_bounds(window, settings):
    settings.MAGEAGENT = {**settings.MAGEAGENT, "FAIR_WINDOW": 6, "FAIR_WINDOW_MIN": 2}
    sent = [t for i in range(100) for t in admit(f"a{i}", ACME_WEB)]
    assert sent == ["a0", "a1"]  # nothing in flight: the minimum
    sizes = []
    while len(fair.fair_in_flight_ids()) < 40:
        for task_id in fair.fair_window_ids():
            fair.fair_started(task_id=task_id)  # started: still in flight, out of the window
        sizes.append(len(fair.fair_window_ids()))

    # A quarter of the tasks in flight, never below 2 nor above 6.
    assert sizes[0] == 2 and sizes[-1] == 6 and sizes == sorted(sizes)
