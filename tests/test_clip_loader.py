"""Tests for clip_loader.py: weight reading, the CLIP computation, preprocessing, the
tokenizer and the download path. CPU only; every model is tiny and random (width 128,
2 layers, patch 8, resolution 32) except ViT-B/32 on the meta device.
"""
import collections
import functools
import hashlib
import http.server
import os
import pickle
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import List

import pytest
import torch
import torch.jit._pickle  # TorchScript's typed-list constructors, for the payload test
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import clip_loader as cl
from clip_loader import CLIP, CLIPConfig, CLIPError

TINY = CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
                  context_length=77, vocab_size=49408, transformer_width=128, transformer_layers=2)
SCALARS = {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}  # OpenAI's archives carry these


def tiny_model(seed=0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(TINY).eval()


def as_openai_stores(model: nn.Module) -> nn.Module:
    """Casts to fp16 what OpenAI stores in fp16: everything but embeddings, LayerNorms and logit_scale."""
    for name, param in model.named_parameters():
        if not any(part in name for part in ("ln_", "embedding", "logit_scale")):
            param.data = param.data.half()
    return model


def save_state_dict(model, path, **extra):
    torch.save({**model.state_dict(), **extra}, path)
    return path


# ------------------------------------------------------------------------- tokenizer


def test_tokenizer_known_ids():
    """Token ids that OpenAI's own tokenizer gives for these texts, each framed by SOT 49406 and EOT 49407."""
    tokens = cl.tokenize(["Hello World!", "a diagram", "a dog", "a cat"])
    assert tokens[0, :5].tolist() == [49406, 3306, 1002, 256, 49407]
    assert tokens[1, :4].tolist() == [49406, 320, 22697, 49407]
    assert tokens[2, :4].tolist() == [49406, 320, 1929, 49407]
    assert tokens[3, :4].tolist() == [49406, 320, 2368, 49407]
    assert len(cl._tokenizer().encoder) == 49408


def test_tokenizer_padding_overlength_and_truncate():
    tokens = cl.tokenize("a dog")
    assert tokens.shape == (1, 77) and tokens[0, 4:].eq(0).all()
    long_text = "dog " * 100  # 100 word tokens + SOT + EOT = 102 > 77
    with pytest.raises(ValueError, match="102 tokens"):
        cl.tokenize(long_text)
    cut = cl.tokenize(long_text, truncate=True)[0]
    assert cut[0] == 49406 and cut[-1] == 49407 and cut[1:-1].eq(1929).all()  # "dog" with </w> is 1929


def test_tokenizer_cleans_html_entities_mojibake_and_whitespace():
    """'&amp;eacute;' is unescaped twice to 'é'; 'cafÃ©' (UTF-8 read as Latin-1) is fixed by ftfy."""
    clean = cl.tokenize("café, tom & jerry")
    assert torch.equal(cl.tokenize("caf&amp;eacute;, Tom &amp; Jerry"), clean)
    assert torch.equal(cl.tokenize("cafÃ©,   TOM\n&\tJerry  "), clean)
    assert not torch.equal(cl.tokenize("cafe, tom & jerry"), clean)


# --------------------------------------------------------------------------- model


def vit_b_32_shapes():
    """Key -> shape of the tensors in OpenAI's ViT-B-32.pt, written out by hand."""
    shapes = {"visual.conv1.weight": (768, 3, 32, 32), "visual.class_embedding": (768,),
              "visual.positional_embedding": (50, 768), "visual.proj": (768, 512),
              "token_embedding.weight": (49408, 512), "positional_embedding": (77, 512),
              "text_projection": (512, 512), "logit_scale": ()}
    for ln, D in (("visual.ln_pre", 768), ("visual.ln_post", 768), ("ln_final", 512)):
        shapes |= {f"{ln}.weight": (D,), f"{ln}.bias": (D,)}
    for prefix, D in (("visual.transformer", 768), ("transformer", 512)):
        for i in range(12):
            p = f"{prefix}.resblocks.{i}."
            shapes |= {p + "attn.in_proj_weight": (3 * D, D), p + "attn.in_proj_bias": (3 * D,),
                       p + "attn.out_proj.weight": (D, D), p + "attn.out_proj.bias": (D,),
                       p + "ln_1.weight": (D,), p + "ln_1.bias": (D,), p + "ln_2.weight": (D,), p + "ln_2.bias": (D,),
                       p + "mlp.c_fc.weight": (4 * D, D), p + "mlp.c_fc.bias": (4 * D,),
                       p + "mlp.c_proj.weight": (D, 4 * D), p + "mlp.c_proj.bias": (D,)}
    return shapes


def test_vit_b_32_keys_shapes_and_hyper_parameters_on_meta():
    shapes = vit_b_32_shapes()
    state_dict = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    config = cl.config_from_state_dict(state_dict)
    assert config == CLIPConfig(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                                vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
                                transformer_layers=12)
    assert (config.grid, config.vision_heads, config.transformer_heads) == (7, 12, 8)
    model = cl.build_clip({**state_dict, **{k: torch.tensor(v) for k, v in SCALARS.items()}})
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert built == shapes and len(built) == 302
    counts = {k: v.numel() for k, v in model.state_dict().items()}
    assert sum(counts.values()) == 151_277_313
    assert sum(n for k, n in counts.items() if k.startswith("visual.")) == 87_849_216
    assert sum(n for k, n in counts.items() if not k.startswith("visual.")) == 63_428_097


@pytest.mark.parametrize("config", [
    CLIPConfig(512, 224, 12, 768, 16, 77, 49408, 512, 12),  # ViT-B/16
    CLIPConfig(768, 224, 24, 1024, 14, 77, 49408, 768, 12),  # ViT-L/14
    CLIPConfig(768, 336, 24, 1024, 14, 77, 49408, 768, 12),  # ViT-L/14@336px
])
def test_other_vit_sizes_derive_from_shapes(config):
    with torch.device("meta"):
        state_dict = CLIP(config).state_dict()
    assert cl.config_from_state_dict(state_dict) == config


def reference_transformer(x, state_dict, prefix, heads, mask=None):
    """Sequence-first residual blocks with torch.nn.MultiheadAttention: x (T, B, D)."""
    D = x.shape[-1]
    layers = len({k.split(".")[len(prefix.split("."))] for k in state_dict if k.startswith(prefix + ".")})
    for i in range(layers):
        p = f"{prefix}.{i}."
        attention = nn.MultiheadAttention(D, heads)
        attention.load_state_dict({k: state_dict[p + "attn." + k] for k in attention.state_dict()})
        h = F.layer_norm(x, (D,), state_dict[p + "ln_1.weight"], state_dict[p + "ln_1.bias"])
        x = x + attention(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (D,), state_dict[p + "ln_2.weight"], state_dict[p + "ln_2.bias"])
        h = F.linear(h, state_dict[p + "mlp.c_fc.weight"], state_dict[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, state_dict[p + "mlp.c_proj.weight"], state_dict[p + "mlp.c_proj.bias"])
    return x


def test_encoders_and_logits_match_an_independent_implementation():
    model = tiny_model()
    sd = model.state_dict()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    texts = cl.tokenize(["a photo of a dog.", "a cat", "Hello World!"])

    x = F.conv2d(images, sd["visual.conv1.weight"], stride=8).flatten(2).permute(2, 0, 1)  # (16, 3, 128)
    x = torch.cat([sd["visual.class_embedding"].expand(1, 3, 128), x]) + sd["visual.positional_embedding"][:, None]
    x = F.layer_norm(x, (128,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = reference_transformer(x, sd, "visual.transformer.resblocks", heads=2)
    image_ref = F.layer_norm(x[0], (128,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]

    mask = torch.full((77, 77), float("-inf")).triu(1)
    x = (sd["token_embedding.weight"][texts] + sd["positional_embedding"]).transpose(0, 1)  # (77, 3, 128)
    x = reference_transformer(x, sd, "transformer.resblocks", heads=2, mask=mask).transpose(0, 1)
    x = F.layer_norm(x, (128,), sd["ln_final.weight"], sd["ln_final.bias"])
    text_ref = x[torch.arange(3), (texts == 49407).int().argmax(1)] @ sd["text_projection"]

    with torch.inference_mode():
        image_ours, text_ours = model.encode_image(images), model.encode_text(texts)
        logits_per_image, logits_per_text = model(images, texts)
    assert torch.allclose(image_ours, image_ref, atol=1e-5), (image_ours - image_ref).abs().max()
    assert torch.allclose(text_ours, text_ref, atol=1e-5), (text_ours - text_ref).abs().max()
    cosine = F.cosine_similarity(image_ref[:, None], text_ref[None], dim=-1)  # (3, 3)
    assert torch.allclose(logits_per_image, sd["logit_scale"].exp() * cosine, atol=1e-4)
    assert torch.equal(logits_per_text, logits_per_image.t())


# ------------------------------------------------------------------------ weight files


class Archived(CLIP):
    """A module whose state_dict has OpenAI's key names and scalars, to make a TorchScript archive from."""

    def forward(self, x):
        return x * self.logit_scale


def torchscript_archive(path, seed=0, how="trace"):
    model = as_openai_stores(Archived(TINY))
    model.load_state_dict(tiny_model(seed).state_dict(), strict=True)  # keeps the fp16 dtypes
    for name, value in SCALARS.items():
        model.register_buffer(name, torch.tensor(value))
    torch.jit.save(torch.jit.trace(model, torch.ones(1)) if how == "trace" else torch.jit.script(model), path)
    return model


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save/load are deprecated
def test_torchscript_archive_and_state_dict_load_identically_as_fp32(tmp_path):
    archived = torchscript_archive(tmp_path / "archive.pt")
    plain = save_state_dict(archived, tmp_path / "plain.pt")  # the same fp16 / fp32 tensors, torch.save'd
    assert any("/code/" in n for n in zipfile.ZipFile(tmp_path / "archive.pt").namelist())

    read = cl.read_state_dict(tmp_path / "archive.pt")
    reference = torch.jit.load(tmp_path / "archive.pt").state_dict()  # torch's own reader agrees
    assert read.keys() == reference.keys() and all(torch.equal(read[k], reference[k]) for k in read)
    assert read["visual.proj"].dtype == torch.float16 and read["visual.ln_pre.weight"].dtype == torch.float32

    model_a, preprocess = cl.load(tmp_path / "archive.pt", "cpu")
    model_b, _ = cl.load(plain, "cpu")
    assert {p.dtype for p in model_a.parameters()} == {torch.float32}
    assert torch.equal(model_a.visual.proj, archived.visual.proj.float())
    torch.manual_seed(2)
    images, texts = torch.randn(2, 3, 32, 32), cl.tokenize(["a dog", "a cat"])
    with torch.inference_mode():
        assert torch.equal(model_a.encode_image(images), model_b.encode_image(images))
        assert torch.equal(model_a.encode_text(texts), model_b.encode_text(texts))
    assert preprocess.transforms[1].size == (32, 32)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class TypedLists(nn.Module):
    """A module with TorchScript's typed-list attributes: torch.jit.script pickles them with
    torch.jit._pickle.build_intlist, build_doublelist, build_boollist and build_tensorlist."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)  # its _reversed_padding_repeated_twice is a List[int]
        self.sizes: List[int] = [1, 2, 3]
        self.scales: List[float] = [0.5, 1.5]
        self.flags: List[bool] = [True, False]
        self.extra: List[torch.Tensor] = [torch.zeros(2), torch.ones(2)]
        self.register_buffer("buf", torch.arange(3.0))

    def forward(self, x):
        return self.conv(x) * self.scales[0] + self.sizes[0]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("how", ["trace", "script"])
def test_archives_written_by_trace_and_script_give_the_tensors_of_torch_jit_load(tmp_path, how):
    """The tiny CLIP and a module with every typed list, saved by torch.jit.trace or torch.jit.script: the
    reader's tensors are exactly torch.jit.load(...).state_dict(), and the CLIP loads and computes."""
    clip = torchscript_archive(tmp_path / "clip.pt", how=how)
    typed = TypedLists()
    compiled = torch.jit.trace(typed, torch.ones(1, 3, 4, 4)) if how == "trace" else torch.jit.script(typed)
    torch.jit.save(compiled, tmp_path / "typed.pt")
    names = zipfile.ZipFile(tmp_path / "typed.pt").namelist()
    pickled = zipfile.ZipFile(tmp_path / "typed.pt").read(next(n for n in names if n.endswith("/data.pkl")))
    assert (b"build_intlist" in pickled) == (how == "script")
    for path in (tmp_path / "clip.pt", tmp_path / "typed.pt"):
        read, reference = cl.read_state_dict(path), torch.jit.load(path).state_dict()
        assert read.keys() == reference.keys() and all(torch.equal(read[k], reference[k]) for k in read)
    model, _ = cl.load(tmp_path / "clip.pt", "cpu")
    assert torch.equal(model.visual.proj, clip.visual.proj.float())


class Payload:
    """Unpickles as a call of torch.jit._pickle.build_intlist (or another allowed global) on `args`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("where", ["top", "typed list", "tensor list", "nested dict"])
def test_a_payload_anywhere_in_data_pkl_is_refused_and_never_called(tmp_path, where):
    marker = tmp_path / "code-was-run"
    evil = Exploit(marker)
    state = {"top": evil,
             "typed list": Payload(torch.jit._pickle.build_intlist, [1, evil]),
             "tensor list": Payload(torch.jit._pickle.build_tensorlist, [evil]),
             "nested dict": collections.OrderedDict(a=collections.OrderedDict(b=[1, 2, evil]))}[where]
    archive = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"visual.proj": state}, protocol=2))
        z.writestr("evil/code/__torch__.py", "")  # makes it look like TorchScript
    with pytest.raises(CLIPError, match=r"asks for the Python object (os|posix)\.system.*refused"):
        cl.read_state_dict(archive)
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "code-was-run"
    archive = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"visual.proj": Exploit(marker)}, protocol=2))
        z.writestr("evil/code/__torch__.py", "")  # makes it look like TorchScript
        z.writestr("evil/constants.pkl", pickle.dumps(()))
    with pytest.raises(CLIPError, match=r"asks for the Python object (os|posix)\.system.*refused"):
        cl.read_state_dict(archive)
    torch_save = tmp_path / "evil_plain.pt"
    torch.save({"x": torch.zeros(1)}, torch_save)
    with zipfile.ZipFile(torch_save) as z:  # the same payload inside a torch.save file: torch.load refuses it
        entries = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(torch_save, "w") as z:
        for name, data in entries.items():
            z.writestr(name, pickle.dumps(Exploit(marker), protocol=2) if name.endswith("data.pkl") else data)
    with pytest.raises(CLIPError, match="neither"):
        cl.read_state_dict(torch_save)
    assert not marker.exists()


def test_truncated_or_foreign_weight_file_is_a_clear_error(tmp_path):
    full = save_state_dict(tiny_model(), tmp_path / "full.pt")
    (tmp_path / "truncated.pt").write_bytes(full.read_bytes()[:5000])
    with pytest.raises(CLIPError, match=r"neither .* 5,000 bytes .*download"):
        cl.read_state_dict(tmp_path / "truncated.pt")
    torch.save({"model": {"a": 1}, "epoch": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(CLIPError, match=r"expected a state dict .* keys \['model', 'epoch'\]"):
        cl.read_state_dict(tmp_path / "checkpoint.pt")


def test_strict_loading_lists_missing_unexpected_and_misshapen_keys():
    state_dict = tiny_model().state_dict()
    del state_dict["visual.ln_post.bias"]
    state_dict["visual.extra"] = torch.zeros(1)
    state_dict["ln_final.bias"] = torch.zeros(7)
    with pytest.raises(CLIPError) as error:
        cl.build_clip(state_dict)
    assert "'visual.ln_post.bias'" in str(error.value) and "'visual.extra'" in str(error.value)
    assert "ln_final.bias (7,) (expected (128,))" in str(error.value)
    del state_dict["visual.proj"]
    with pytest.raises(CLIPError, match="not a ViT CLIP"):
        cl.build_clip(state_dict)


# -------------------------------------------------------------------------- preprocess


def expected_pixel(rgb):
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(rgb, cl.MEAN, cl.STD)])


@pytest.mark.parametrize("image, rgb", [
    (Image.new("RGB", (640, 480), (255, 255, 255)), (255, 255, 255)),
    (Image.new("RGBA", (300, 200), (255, 0, 0, 128)), (255, 0, 0)),  # alpha is dropped, as OpenAI does
    (Image.new("RGBA", (300, 200), (255, 0, 0, 0)), (0, 0, 0)),  # Pillow's resize zeroes fully clear pixels
    (Image.new("L", (200, 300), 0), (0, 0, 0)),
    (Image.new("P", (120, 90), 0), (0, 0, 0)),  # palette entry 0 is black
    (Image.new("RGB", (1, 1), (0, 255, 0)), (0, 255, 0)),  # tiny
    (Image.new("RGB", (6000, 4000), (0, 0, 255)), (0, 0, 255)),  # huge (24 megapixels)
])
def test_preprocess_modes_sizes_and_normalisation(image, rgb):
    x = cl.make_preprocess(224)(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x, expected_pixel(rgb)[:, None, None].expand(3, 224, 224), atol=1e-5)


def test_preprocess_resizes_the_shorter_side_and_crops_the_centre():
    """896×448: red | green | blue in columns [0, 224) [224, 672) [672, 896). Resized to 448×224 the
    green band is columns [112, 336), exactly the centre crop; squashing or a corner crop shows red."""
    image = Image.new("RGB", (896, 448), (255, 0, 0))
    image.paste((0, 255, 0), (224, 0, 672, 448))
    image.paste((0, 0, 255), (672, 0, 896, 448))
    x = cl.make_preprocess(224)(image)  # (3, 224, 224)
    green = expected_pixel((0, 255, 0))[:, None, None]
    assert torch.allclose(x[:, :, 4:-4], green.expand(3, 224, 216), atol=1e-5)  # bicubic blurs the band edges


def without_torchvision(error):
    """An __import__ under which `import torchvision...` raises `error`, as a missing torchvision or one built
    for another torch does."""
    real = __import__

    def imports(name, *args, **kwargs):
        if name.split(".")[0] == "torchvision":
            raise error
        return real(name, *args, **kwargs)
    return imports


@pytest.mark.parametrize("error, torch_version, installed, command", [
    (RuntimeError("operator torchvision::nms does not exist"), "2.14.1+cpu", "0.28.0",
     "pip install torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu"),
    (ImportError("No module named 'torchvision'"), "2.14.1", None, "pip install torchvision==0.29.1"),
    (RuntimeError("operator torchvision::nms does not exist"), "2.5.1+cu124", "0.29.1",
     "pip install torchvision==0.20.1 --index-url https://download.pytorch.org/whl/cu124"),
])
def test_a_torchvision_that_does_not_import_is_one_clear_message(error, torch_version, installed, command,
                                                                 monkeypatch):
    """torch 2.m.p pairs with torchvision 0.(m+15).p: 2.14.1 with 0.29.1, 2.5.1 with 0.20.1; the wheel index
    is the one torch's local version names (+cpu, +cu124), none for PyPI's wheels."""
    def version(name):
        if installed is None:
            raise cl.importlib.metadata.PackageNotFoundError(name)
        return installed
    monkeypatch.setattr("builtins.__import__", without_torchvision(error))
    monkeypatch.setattr(torch, "__version__", torch_version)
    monkeypatch.setattr(cl.importlib.metadata, "version", version)
    with pytest.raises(CLIPError) as caught:
        cl.make_preprocess(32)
    message = str(caught.value)
    assert f"({type(error).__name__}: {error})" in message and message.endswith(f"for this torch: {command}")
    assert f"torch {torch_version} is installed with {f'torchvision {installed}' if installed else 'no torchvision'}" \
        in message


HELP_WITHOUT_TORCHVISION = """
import runpy, sys
sys.modules["torchvision"] = None  # import torchvision raises ImportError
for command in sys.argv[1:]:
    sys.argv = [command, "--help"]
    try:
        (runpy.run_path if command.endswith(".py") else runpy.run_module)(command, run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code in (0, None), (command, exit_.code)
import clip_loader, evaluate, train
"""


def test_every_command_and_the_core_import_without_torchvision():
    """torchvision is imported only where images are preprocessed: `--help` of every command and the imports
    of training, evaluation and CLIP work where it is missing or broken."""
    commands = ["train.py", "walkthrough.py", "tools.amazon", "tools.report", "tools.embed", "tools.benchmark",
                "tools.simulate"]
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", HELP_WITHOUT_TORCHVISION, *commands],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.count("usage: ") == len(commands)


# ---------------------------------------------------------------------------- download


@pytest.fixture
def server(tmp_path, monkeypatch):
    """http.server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def test_download_keeps_the_file_only_when_the_hash_matches(server, tmp_path):
    url, served = server
    payload = os.urandom(3 * 2**20 + 17)
    (served / "weights.pt").write_bytes(payload)
    sha256 = hashlib.sha256(payload).hexdigest()
    cache = tmp_path / "cache"

    with pytest.raises(CLIPError, match=f"should have {'0' * 64}.*temp file was deleted"):
        cl.download(f"{url}/weights.pt", cache / "weights.pt", "0" * 64)
    assert list(cache.iterdir()) == []

    cl.download(f"{url}/weights.pt", cache / "weights.pt", sha256)
    assert (cache / "weights.pt").read_bytes() == payload and len(list(cache.iterdir())) == 1


def test_model_names_resolve_to_the_cache_download_or_a_clear_message(server, tmp_path, monkeypatch):
    url, served = server
    payload = b"pretend weights"
    sha256 = hashlib.sha256(payload).hexdigest()
    (served / sha256).mkdir()
    (served / sha256 / "Tiny.pt").write_bytes(payload)
    monkeypatch.setitem(cl.MODELS, "Tiny", f"{url}/{sha256}/Tiny.pt")
    cache = tmp_path / "cache"

    with pytest.raises(CLIPError, match=f"download {url}/{sha256}/Tiny.pt and put it at {cache / 'Tiny.pt'}"):
        cl.resolve_weights("Tiny", offline=True, cache_dir=cache)
    assert cl.resolve_weights("Tiny", cache_dir=cache) == cache / "Tiny.pt"
    assert (cache / "Tiny.pt").read_bytes() == payload
    shutil.rmtree(served / sha256)  # now served from the cache, hash checked
    assert cl.resolve_weights("Tiny", cache_dir=cache) == cache / "Tiny.pt"
    (cache / "Tiny.pt").write_bytes(payload[:5])
    with pytest.raises(CLIPError, match="wrong SHA256.*delete it"):
        cl.resolve_weights("Tiny", cache_dir=cache)
    (cache / "Tiny.pt").unlink()
    with pytest.raises(CLIPError, match=f"could not download .*put it at {cache / 'Tiny.pt'}"):
        cl.resolve_weights("Tiny", cache_dir=cache)  # the server answers 404 now
    assert cl.MODELS["ViT-B/32"].endswith("/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/"
                                          "ViT-B-32.pt")
