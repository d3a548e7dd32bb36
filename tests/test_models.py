"""Tests for the model registry and architectures in pclc.models."""

from __future__ import annotations

import pytest
import torch

from pclc.models import check_model_fits, create_model, list_models

# (in_channels, input_size, num_classes) for each dataset a model is meant for.
_GRAY28 = [(1, 28, 10)]
_COLOUR = [(3, 32, 10), (3, 32, 100), (3, 64, 200)]
FITS = {"lenet5": _GRAY28, "cnn3": _GRAY28, "vgg13": _COLOUR, "resnet56": _COLOUR}
FEATURE_DIM = {"lenet5": 84, "cnn3": 100, "vgg13": 512, "resnet56": 64}

CASES = [(name, *shape) for name in list_models() for shape in FITS[name]]
FULL_CASES = [c for c in CASES if c[2] != 64]  # 64x64 K=200: shapes only (speed)


def _case_id(c):
    return f"{c[0]}-{c[1]}x{c[2]}x{c[2]}-K{c[3]}"


def test_every_registered_model_has_test_datasets():
    assert sorted(FITS) == list_models()


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_shapes_and_forward_equals_head_of_features(case):
    name, c, s, k = case
    torch.manual_seed(0)
    model = create_model(name, num_classes=k, in_channels=c, input_size=s).eval()
    x = torch.randn(2, c, s, s)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
        assert logits.shape == (2, k)
        assert model.feature_dim == FEATURE_DIM[name]
        assert feats.shape == (2, model.feature_dim)
        torch.testing.assert_close(logits, model.head(feats))


@pytest.mark.parametrize("case", FULL_CASES, ids=_case_id)
def test_every_parameter_gets_finite_gradient(case):
    name, c, s, k = case
    torch.manual_seed(0)
    model = create_model(name, num_classes=k, in_channels=c, input_size=s).train()
    model(torch.randn(2, c, s, s)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no grad for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite grad for {pname}"


# Hand-computed parameter counts at K=10 (conv: Cin*Cout*k*k [+ Cout bias]; BN: 2*C; FC: in*out+out).
#
# LeNet-5 (1x28x28): conv1 1*6*25+6=156; conv2 6*16*25+16=2,416; fc1 400*120+120=48,120;
#   fc2 120*84+84=10,164; fc3 84*10+10=850  ->  156+2,416+48,120+10,164+850 = 61,706.
# CNN3 (1x28x28): conv1 1*16*25+16=416; conv2 16*32*25+32=12,832; conv3 32*64*25+64=51,264;
#   fc1 576*100+100=57,700; fc2 100*10+10=1,010  ->  123,222.
# VGG-13-BN (3x32x32, conv bias on; five pools leave 512x1x1 -> flatten 512):
#   convs (weights+bias): 3*64*9+64=1,792; 64*64*9+64=36,928; 64*128*9+128=73,856;
#   128*128*9+128=147,584; 128*256*9+256=295,168; 256*256*9+256=590,080;
#   256*512*9+512=1,180,160  -> subtotal 2,325,568;
#   plus 3 x (512*512*9+512=2,359,808) = 7,079,424  -> convs 9,404,992;
#   BN: 2*(64+64+128+128+256+256+512+512+512+512) = 2*2,944 = 5,888;
#   classifier: 512*512+512=262,656; 512*10+10=5,130
#   -> 9,404,992+5,888+262,656+5,130 = 9,678,666.
# ResNet-56 (3x32x32, bias-free convs, option-A shortcuts have no params):
#   stem conv 3*16*9=432, BN 32                                        ->     464
#   stage1: 9 blocks x (2*16*16*9 + 2*32) = 9*4,672                    ->  42,048
#   stage2: first (16*32*9 + 32*32*9 + 2*64) = 4,608+9,216+128=13,952;
#           8 x (2*32*32*9 + 2*64) = 8*18,560=148,480                  -> 162,432
#   stage3: first (32*64*9 + 64*64*9 + 2*128) = 18,432+36,864+256=55,552;
#           8 x (2*64*64*9 + 2*128) = 8*73,984=591,872                 -> 647,424
#   fc 64*10+10                                                        ->     650
#   -> 464+42,048+162,432+647,424+650 = 853,018.
PARAM_COUNTS = {
    ("lenet5", 1, 28): 61_706,
    ("cnn3", 1, 28): 123_222,
    ("vgg13", 3, 32): 9_678_666,
    ("resnet56", 3, 32): 853_018,
}


@pytest.mark.parametrize("key", list(PARAM_COUNTS), ids=lambda k: k[0])
def test_parameter_counts(key):
    name, c, s = key
    model = create_model(name, num_classes=10, in_channels=c, input_size=s)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[key]


@pytest.mark.parametrize(
    "name, c, s, accepts, given",
    [
        ("lenet5", 3, 32, "1x28x28", "3x32x32"),
        ("vgg13", 1, 28, "3x32x32 or 3x64x64", "1x28x28"),
        ("resnet56", 3, 28, "3x32x32 or 3x64x64", "3x28x28"),
    ],
)
def test_mismatched_dataset_raises(name, c, s, accepts, given):
    for fn in (check_model_fits, create_model):
        with pytest.raises(ValueError) as exc:
            fn(name, in_channels=c, input_size=s, num_classes=10)
        msg = str(exc.value)
        assert repr(name) in msg and accepts in msg and given in msg


def test_mismatch_message_suggests_fitting_models():
    with pytest.raises(ValueError, match=r"use resnet56 or vgg13"):
        check_model_fits("lenet5", in_channels=3, input_size=32, num_classes=10)


def test_num_classes_below_two_raises():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        create_model("lenet5", num_classes=1, in_channels=1, input_size=28)


def test_unknown_model_lists_known_names():
    with pytest.raises((KeyError, ValueError)) as exc:
        create_model("resnet18", num_classes=10, in_channels=3, input_size=32)
    msg = str(exc.value)
    assert "resnet18" in msg
    assert all(name in msg for name in list_models())
