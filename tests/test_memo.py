from assistant.memo import Kept


def test_only_keys_not_kept_are_computed_each_distinct_one_once():
    asked = []

    def square(keys):
        asked.append(list(keys))
        return [k * k for k in keys]

    kept = Kept(3)
    assert kept.values([2, 3, 2], square) == [4, 9, 4]
    assert kept.values([3, 4], square) == [9, 16]
    assert asked == [[2, 3], [4]]


def test_the_oldest_values_go_past_the_size_and_are_computed_again():
    asked = []
    kept = Kept(2)
    for keys in ([1], [2], [3], [1]):
        kept.values(keys, lambda ks: asked.extend(ks) or [str(k) for k in ks])
    assert asked == [1, 2, 3, 1] and len(kept) == 2


def test_a_callers_store_is_read_and_filled_without_a_limit():
    store = {"a": 1}
    kept = Kept(1)
    assert kept.values(["a", "b", "c"], lambda ks: [ord(k) for k in ks], store=store) == [1, 98, 99]
    assert store == {"a": 1, "b": 98, "c": 99} and len(kept) == 0
