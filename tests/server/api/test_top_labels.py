"""TopLabels keeps per-adapter series bounded: the most requested names keep a label, the rest share "other"."""

from server.api.metrics import OTHER, TopLabels


def test_first_names_fill_the_labels_then_the_rest_share_other():
    dropped = []
    top = TopLabels(2, dropped.append)
    assert [top.label(n) for n in ["a", "b", "c", "d"]] == ["a", "b", OTHER, OTHER]
    assert top.labelled == {"a", "b"} and dropped == []


def test_a_name_that_overtakes_the_weakest_label_takes_its_place():
    dropped = []
    top = TopLabels(2, dropped.append)
    for n in ["a", "a", "a", "b"]:
        top.label(n)
    assert top.label("c") == OTHER  # 1 use, ties b: not promoted
    assert top.label("c") == "c"  # 2 uses, passes b
    assert dropped == ["b"] and top.labelled == {"a", "c"}
    assert top.label("b") == OTHER  # b is back to 2 uses, ties c


def test_labels_stay_bounded_under_many_names():
    top = TopLabels(5)
    labels = {top.label(f"adapter-{i % 1000}") for i in range(20_000)}
    assert len(top.labelled) == 5 and labels <= top.counts.keys() | {OTHER}
    assert len(labels - {OTHER}) < 1000  # most names never got a series of their own
