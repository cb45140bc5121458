"""The OWLv2 detector expert on a tiny OWLv2 built from a config, saved and loaded back offline."""
import math

import pytest
import torch

from poegen.experts.detector import OPTIONS, DetectorPotential, DetectorScorer, load_detector, mean_iou

from helpers import tiny_clip_folder, tiny_owlv2_folder

PHRASES = ["a red ball", "a blue box", "box"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The tiny OWLv2 with its heads tamed as a trained OWLv2's are: logits of a few units (no score saturates at
    1, so each phrase's best box is unique) and boxes near their patches (not collapsed to zero or full width)."""
    from transformers import Owlv2ForObjectDetection

    folder = tiny_owlv2_folder(tmp_path_factory.mktemp("owlv2"))
    model = Owlv2ForObjectDetection.from_pretrained(folder)
    with torch.no_grad():
        model.class_head.logit_scale.weight.mul_(0.2)
        model.class_head.logit_shift.weight.mul_(0.2)
        model.box_head.dense2.weight.mul_(0.001)
    model.save_pretrained(folder)
    return folder


def _uint8_images(n, height=32, width=32, seed=1):
    """Images in [-1, 1] that are exactly 8-bit pixels, so the processor sees the same ones."""
    u8 = torch.randint(0, 256, (n, 3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return u8, u8.float() / 255 * 2 - 1


def _reference(root, u8, phrases):
    """The model's own outputs through transformers' processor path (no resize: the images are at its size,
    and its resize needs scipy, which is not installed)."""
    from PIL import Image
    from transformers import AutoProcessor, Owlv2ForObjectDetection

    processor, model = AutoProcessor.from_pretrained(root), Owlv2ForObjectDetection.from_pretrained(root)
    inputs = processor(text=[phrases] * len(u8), images=[Image.fromarray(u.permute(1, 2, 0).numpy()) for u in u8],
                       return_tensors="pt", do_resize=False)
    with torch.no_grad():
        out = model(**inputs)
    return processor, inputs, out


def _hand_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detect_matches_the_processor_path(root):
    scorer = DetectorScorer.from_pretrained(root)
    u8, images = _uint8_images(2)
    scores, boxes = scorer.detect(images, PHRASES)
    assert scores.shape == (2, 3, 16) and boxes.shape == (2, 16, 4)
    processor, inputs, out = _reference(root, u8, PHRASES)
    assert torch.equal(scorer.tokens(PHRASES)[0].repeat(2, 1), inputs.input_ids)
    assert torch.allclose(scorer.pixels(images), inputs.pixel_values, atol=1e-5)
    assert torch.allclose(scores, out.logits.sigmoid().transpose(1, 2), atol=1e-5)
    post = processor.image_processor.post_process_object_detection(out, threshold=-1.0)
    for i, r in enumerate(post):
        assert torch.allclose(scores[i].max(0).values, r["scores"], atol=1e-5)
        assert torch.equal(scores[i].argmax(0), r["labels"])
        assert torch.allclose(boxes[i], r["boxes"], atol=1e-5)
    assert PHRASES[0] in scorer._tokens  # tokenised once, cached


def test_non_square_images_are_padded_like_owlv2_and_boxes_are_image_fractions(root):
    scorer = DetectorScorer.from_pretrained(root)
    u8, images = _uint8_images(2, height=16, width=32)
    scores, boxes = scorer.detect(images, PHRASES)
    processor, inputs, out = _reference(root, u8, PHRASES)  # pads the bottom to 32x32 (no resize needed)
    assert torch.allclose(scorer.pixels(images), inputs.pixel_values, atol=1e-5)
    assert torch.allclose(scores, out.logits.sigmoid().transpose(1, 2), atol=1e-5)
    ref = processor.image_processor.post_process_object_detection(out, threshold=-1.0, target_sizes=[(16, 32)] * 2)
    fractions = torch.stack([r["boxes"] for r in ref]) / torch.tensor([32.0, 16.0, 32.0, 16.0])  # pixels of 16x32
    assert torch.allclose(boxes, fractions, atol=1e-5)


def test_potential_is_log_of_best_score_times_iou(root):
    scorer = DetectorScorer.from_pretrained(root)
    u8, images = _uint8_images(3)
    _, _, out = _reference(root, u8, PHRASES)
    target = (0.1, 0.2, 0.6, 0.7)
    with_box = DetectorPotential(scorer, "a blue box", target, eps=1e-9).log_potential(images)
    anywhere = DetectorPotential(scorer, "a blue box", eps=1e-9).log_potential(images)
    assert with_box.shape == (3,) and not torch.allclose(with_box, anywhere)
    for i in range(3):
        score = out.logits[i, :, 1].sigmoid().tolist()
        cx, cy, w, h = out.pred_boxes[i].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).tolist()
        best = max(s * _hand_iou(b, target) for s, b in zip(score, xyxy))
        assert math.isclose(with_box[i].item(), math.log(best + 1e-9), abs_tol=1e-4)
        assert math.isclose(anywhere[i].item(), math.log(max(score) + 1e-9), abs_tol=1e-4)
    assert DetectorPotential(scorer, "a blue box", target).name == "detect[a blue box@0.10,0.20,0.60,0.70]"
    with pytest.raises(ValueError, match=r"box \(0.5, 0.2, 0.1, 0.7\) is not x0, y0, x1, y1"):
        DetectorPotential(scorer, "a ball", (0.5, 0.2, 0.1, 0.7))


def test_potentials_on_one_detector_share_one_forward_per_micro_batch(root):
    _, images = _uint8_images(5)
    boxes = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0), None]
    for micro_batch, forwards in ((None, 1), (2, 3)):
        scorer = DetectorScorer.from_pretrained(root, micro_batch=micro_batch)
        calls = []
        hook = scorer.model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
        pots = [DetectorPotential(scorer, p, b) for p, b in zip(PHRASES, boxes)]
        assert len({p.batch_key for p in pots}) == 1
        values = DetectorPotential.log_potential_batch(pots, images)
        hook.remove()
        assert values.shape == (3, 5) and len(calls) == forwards
        singles = torch.stack([p.log_potential(images) for p in pots])
        assert torch.allclose(values, singles, atol=1e-5)
        if micro_batch is None:
            whole = values
    assert torch.allclose(values, whole, atol=1e-5)  # micro-batching changes the cost, not the values
    other = DetectorScorer.from_pretrained(root)  # loaded once: questions from any entry share the model
    assert other.model is scorer.model and DetectorPotential(other, "box").batch_key == pots[0].batch_key


def test_mean_iou_is_the_mean_iou_of_each_objects_best_box(root):
    scorer = DetectorScorer.from_pretrained(root)
    u8, images = _uint8_images(2)
    _, _, out = _reference(root, u8, PHRASES)
    targets = [(0.1, 0.1, 0.5, 0.5), (0.4, 0.3, 0.9, 0.8), (0.0, 0.5, 0.5, 1.0)]
    miou = mean_iou(scorer, images, PHRASES, targets)
    assert miou.shape == (2,)
    for i in range(2):
        ious = []
        for k, t in enumerate(targets):
            cx, cy, w, h = out.pred_boxes[i, out.logits[i, :, k].argmax()].tolist()
            ious.append(_hand_iou((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), t))
        assert math.isclose(miou[i].item(), sum(ious) / 3, abs_tol=1e-5)
    scores, boxes = scorer.detect(images, PHRASES)
    best = torch.stack([boxes[i, scores[i].argmax(-1)] for i in range(2)])  # (N, K, 4): each object's best box
    assert torch.allclose(mean_iou(scorer, images, PHRASES, best), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match=r"boxes: shape \(2, 4\); expected \(3, 4\)"):
        mean_iou(scorer, images, PHRASES, targets[:2])


def test_a_model_that_cannot_take_text_queries_is_refused(tmp_path):
    clip = tiny_clip_folder(tmp_path / "clip")
    with pytest.raises(ValueError, match=f"{clip}.*'clip'.* not a detector that can take text queries; pass an OWLv2"):
        DetectorScorer.from_pretrained(clip)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*None.*not a detector that can take text queries"):
        DetectorScorer.from_pretrained(str(tmp_path / "empty"))


def test_potential_is_differentiable_in_the_images(root):
    scorer = DetectorScorer.from_pretrained(root)
    _, images = _uint8_images(2)
    x = images.clone().requires_grad_(True)
    for pot in (DetectorPotential(scorer, "a red ball", (0.2, 0.2, 0.8, 0.8)), DetectorPotential(scorer, "box")):
        x.grad = None
        pot.log_potential(x).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_loader_shares_one_detector_and_names_its_options(root):
    import inspect

    pots = load_detector(root, ["a red ball", ("a blue box", (0.1, 0.1, 0.5, 0.5)),
                                {"phrase": "box", "box": [0.5, 0.5, 1.0, 1.0]}], micro_batch=2, torch_dtype="bfloat16")
    assert [p.box for p in pots] == [None, (0.1, 0.1, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)]
    assert len({id(p.scorer) for p in pots}) == 1 and pots[0].scorer.micro_batch == 2
    assert next(pots[0].scorer.model.parameters()).dtype == torch.bfloat16
    _, images = _uint8_images(2)
    assert DetectorPotential.log_potential_batch(pots, images).dtype == torch.float32
    assert set(OPTIONS) == set(inspect.signature(load_detector).parameters) - {"path", "phrases_and_boxes"}
    with pytest.raises(ValueError, match=r"objects\[0\]: box .* is not x0, y0, x1, y1"):
        load_detector(root, [("a ball", (0.0, 0.0, 1.5, 1.0))])
    with pytest.raises(ValueError, match="torch_dtype 'int8' is not one of"):
        load_detector(root, ["a ball"], torch_dtype="int8")
