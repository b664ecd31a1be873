"""The demo's shortened lines (devstack/demo.py ``cut``): what ``scripts/run.sh`` prints of a long
warning, error or summary ends at a word and says it was shortened."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from devstack.demo import cut


@given(st.text(alphabet=st.sampled_from("ab :{}\"é"), max_size=300), st.integers(min_value=1, max_value=200))
def test_a_cut_line_is_a_prefix_at_a_word_boundary_marked_as_shortened(text: str, limit: int) -> None:
    out = cut(text, limit)
    if len(text) <= limit:
        assert out == text
        return
    assert out.endswith(" …")
    head = out[: -len(" …")]
    assert text.startswith(head) and len(head) <= limit
    if " " in text[:limit].lstrip(" ") and text[:limit].rfind(" ") > 0:
        assert text[len(head):].startswith(" ")  # never inside a word


def test_the_guard_warning_of_the_demo_is_cut_between_words() -> None:
    warning = ("approved 905 held addresses deletions (held-set digest 8d679ac4f11294fa) by cli:root@vm; "
               "the next update sends those still implied by the directory")
    assert cut(warning, 140) == ("approved 905 held addresses deletions (held-set digest 8d679ac4f11294fa) by cli:root@vm; "
                                 "the next update sends those still implied by the …")
