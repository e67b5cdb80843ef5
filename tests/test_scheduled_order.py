"""`make test`'s module order (tests/conftest.py's scheduled_order)."""

from types import SimpleNamespace

from tests.conftest import DEMO_MODULE, scheduled_order


def _item(module: str, name: str, demo: bool = False):
    return SimpleNamespace(nodeid=f"{module}::{name}", fixturenames=["quick_demo"] if demo else [])


def test_the_demo_module_comes_first_and_the_other_demo_readers_last():
    items = [
        _item("tests/a_test.py", "one"),
        _item("tests/serve_test.py", "reads", demo=True),
        _item("tests/serve_test.py", "plain"),
        _item("tests/big_test.py", "x"), _item("tests/big_test.py", "y"), _item("tests/big_test.py", "z"),
        _item(DEMO_MODULE, "runs", demo=True),
        _item("tests/a_test.py", "two"),
    ]  # fmt: skip
    order = [i.nodeid for i in scheduled_order(items)]
    assert order == [
        f"{DEMO_MODULE}::runs",
        "tests/big_test.py::x", "tests/big_test.py::y", "tests/big_test.py::z",
        "tests/a_test.py::one", "tests/a_test.py::two",
        "tests/serve_test.py::reads", "tests/serve_test.py::plain",
    ]  # fmt: skip
    # Whatever the collection order, the demo's own module starts.
    assert [i.nodeid for i in scheduled_order(list(reversed(items)))][0] == f"{DEMO_MODULE}::runs"
    assert sorted(order) == sorted(i.nodeid for i in items)
