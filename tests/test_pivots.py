import torch

from mucrasp.calibration.pivots import PivotConfig, equal_interval_pivots, find_pivots, marker_offsets, window_mask


def char_tokens(text: str) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(len(text))]


def test_markers_found_at_word_boundaries():
    text = "Step 1: look. Also so. So it moves. Therefore done, because x."
    offsets = marker_offsets(text, PivotConfig())
    assert [text[o : o + 4] for o in offsets] == ["Step", "So i", "Ther", "beca"]


def test_pivot_tokens_map_to_the_token_holding_the_marker():
    text = "ab Thus cd"
    tokens = [(0, 2), (2, 3), (3, 7), (7, 10)]
    result = find_pivots(text, tokens, PivotConfig(window=1))
    assert result.pivots == [2] and result.from_markers
    assert result.mask.tolist() == [False, False, True, False]


def test_window_edges_clipped_at_both_ends():
    mask = window_mask(10, [0, 9], window=8)
    assert mask.tolist() == [True] * 4 + [False] * 1 + [True] * 5
    assert window_mask(3, [1], window=8).all()


def test_window_of_w_tokens_in_the_middle():
    mask = window_mask(40, [20], window=8)
    assert int(mask.sum()) == 8 and mask[16] and mask[23] and not mask[15] and not mask[24]


def test_equal_interval_fallback_without_markers():
    text = "x" * 50
    result = find_pivots(text, char_tokens(text), PivotConfig(fallback_interval=20, window=4))
    assert not result.from_markers
    assert result.pivots == equal_interval_pivots(50, 20) == [10, 30]
    assert int(result.mask.sum()) == 8


def test_custom_marker_list():
    config = PivotConfig(markers=("Wait",))
    assert marker_offsets("Wait, Therefore", config) == [0]
    assert find_pivots("Therefore", char_tokens("Therefore"), config).from_markers is False


def test_short_trace_gets_one_pivot():
    assert equal_interval_pivots(3, 20) == [2]
    assert window_mask(0, [], 8).shape == torch.Size([0])
