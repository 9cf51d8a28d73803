import torch

from dgsnet.models import CaptionFeatureCache


def make_encoder(calls):
    def encode(captions):
        calls.extend(captions)
        return torch.stack([torch.full((4,), float(len(c))) for c in captions])
    return encode


def test_each_distinct_caption_is_encoded_once(tmp_path):
    calls = []
    cache = CaptionFeatureCache(make_encoder(calls), key="k", batch_size=2)
    feats = cache.features(["a", "bb", "a", "ccc"])
    assert feats.shape == (4, 4) and feats[:, 0].tolist() == [1, 2, 1, 3]
    cache.features(["bb", "a", "dddd"])
    assert sorted(calls) == ["a", "bb", "ccc", "dddd"]
    assert cache.encoded == 4


def test_persisted_cache_is_reused_only_for_the_same_key(tmp_path):
    path = str(tmp_path / "cache.safetensors")
    first = CaptionFeatureCache(make_encoder([]), key="tower-1", path=path)
    first.features(["x", "yy"])
    first.save()
    calls = []
    again = CaptionFeatureCache(make_encoder(calls), key="tower-1", path=path)
    torch.testing.assert_close(again.features(["yy", "x"]), first.features(["yy", "x"]))
    assert calls == []
    other = CaptionFeatureCache(make_encoder(calls), key="tower-2", path=path)
    other.features(["x"])
    assert calls == ["x"]
