"""CLIP for IFCDSR: the frozen image encoder that builds E_img (paper §3.1.1).

Reads OpenAI's CLIP weights with code of its own (no TorchScript is run), rebuilds
the ViT image tower and the text tower, and carries OpenAI's preprocessing and BPE
tokenizer. `tools/embed.py` uses it to turn a scenario's item images into
`<scenario>/image_embeddings.npy`.

API: `load(name_or_path, device) -> (model, preprocess)`, `tokenize(texts)`,
`build_clip(state_dict)`. Format facts: OpenAI's published checkpoints (MIT).

Dimension letters: B batch, R image side in pixels, P patch side, G = R / P grid
side, T tokens (1 + G² for images, C = 77 for text), D transformer width,
H heads, E joint embedding width (the paper's e = 512).
"""
import collections
import gzip
import hashlib
import html
import importlib.metadata
import math
import pickle
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from data import Progress, atomic_write, file_problem

# OpenAI's download URL; its second-to-last segment is the file's SHA256.
MODELS = {
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
}
CACHE_DIR = Path("~/.cache/clip").expanduser()  # where OpenAI's own loader keeps them
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's normalisation constants
STD = (0.26862954, 0.26130258, 0.27577711)
BPE_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")


class CLIPError(Exception):
    """A problem the user can fix; the message says what was expected and what to do."""


# ----------------------------------------------------------------------------- model


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so fp16 weights elsewhere stay stable."""

    def forward(self, x):
        weight, bias = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        # QuickGELU(x) = x · σ(1.702 x), the activation CLIP was trained with
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (OpenAI's keys)."""

    def __init__(self, *, width, heads, causal):
        super().__init__()
        assert width % heads == 0, f"width {width} must be a multiple of heads {heads}"
        self.heads, self.causal = heads, causal
        self.in_proj_weight = nn.Parameter(torch.randn(3 * width, width) * width**-0.5)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x):  # (B, T, D)
        B, T, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3D)
        q, k, v = qkv.view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, T, D/H)
        # softmax(q kᵀ / √(D/H) + mask) v; the text mask is -inf above the diagonal
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, D/H)
        return self.out_proj(x.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, *, width, heads, causal):
        super().__init__()
        self.attn = Attention(width=width, heads=heads, causal=causal)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(collections.OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = LayerNorm(width)

    def forward(self, x):  # (B, T, D)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, *, width, layers, heads, causal):
        super().__init__()
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width=width, heads=heads, causal=causal) for _ in range(layers)])

    def forward(self, x):  # (B, T, D)
        return self.resblocks(x)


@dataclass(frozen=True)
class CLIPConfig:
    """Every size of a ViT CLIP; `config_from_state_dict` reads them off the tensor shapes."""
    embed_dim: int  # E: joint image-text width (512 for ViT-B/32; the paper's e)
    image_resolution: int  # R: input side in pixels (224)
    vision_layers: int  # image transformer depth (12)
    vision_width: int  # image transformer width D (768)
    vision_patch_size: int  # P: patch side (32)
    context_length: int  # C: text positions (77)
    vocab_size: int  # BPE vocabulary (49,408)
    transformer_width: int  # text transformer width D (512)
    transformer_layers: int  # text transformer depth (12)

    @property
    def grid(self):  # G: patches per side (7)
        return self.image_resolution // self.vision_patch_size

    @property
    def vision_heads(self):  # OpenAI's rule: one head per 64 channels (12)
        return self.vision_width // 64

    @property
    def transformer_heads(self):  # (8)
        return self.transformer_width // 64


class VisionTransformer(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        D, P, G = config.vision_width, config.vision_patch_size, config.grid
        self.conv1 = nn.Conv2d(3, D, kernel_size=P, stride=P, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(D) * D**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(G * G + 1, D) * D**-0.5)
        self.ln_pre = LayerNorm(D)
        self.transformer = Transformer(width=D, layers=config.vision_layers, heads=config.vision_heads, causal=False)
        self.ln_post = LayerNorm(D)
        self.proj = nn.Parameter(torch.randn(D, config.embed_dim) * D**-0.5)

    def forward(self, image):  # (B, 3, R, R)
        x = self.conv1(image)  # (B, D, G, G)
        x = x.flatten(2).transpose(1, 2)  # (B, G², D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, T, D), T = 1 + G²
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # class token (B, D) -> (B, E)


class CLIP(nn.Module):
    """OpenAI's ViT CLIP; the text tower's parameters sit at the top level, as in their files."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        D = config.transformer_width
        self.visual = VisionTransformer(config)
        self.token_embedding = nn.Embedding(config.vocab_size, D)
        self.positional_embedding = nn.Parameter(torch.randn(config.context_length, D) * 0.01)
        self.transformer = Transformer(width=D, layers=config.transformer_layers, heads=config.transformer_heads,
                                       causal=True)
        self.ln_final = LayerNorm(D)
        self.text_projection = nn.Parameter(torch.randn(D, config.embed_dim) * D**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, image):  # (B, 3, R, R) -> (B, E), not normalised
        return self.visual(image.to(self.dtype))

    def encode_text(self, text):  # (B, C) token ids -> (B, E), not normalised
        x = (self.token_embedding(text) + self.positional_embedding).to(self.dtype)  # (B, C, D)
        x = self.ln_final(self.transformer(x))
        eot = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]  # end-of-text has the largest id; (B, D)
        return eot @ self.text_projection  # (B, E)

    def forward(self, image, text):
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        # logits = exp(logit_scale) · cos(image, text)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()  # (B_image, B_text)
        return logits_per_image, logits_per_image.t()


def config_from_state_dict(state_dict) -> CLIPConfig:
    """Derives every hyper-parameter from tensor shapes, as OpenAI's checkpoints carry no config."""
    if "visual.proj" not in state_dict:
        raise CLIPError("these weights have no 'visual.proj': they are not a ViT CLIP (ResNet CLIP models such "
                        "as RN50 are not supported); use ViT-B/32, ViT-B/16, ViT-L/14 or ViT-L/14@336px weights")

    def shape(key):
        if key not in state_dict:
            raise CLIPError(f"the weights lack the key {key!r} that every ViT CLIP has")
        return state_dict[key].shape

    vision_width, _, patch, _ = shape("visual.conv1.weight")  # (D, 3, P, P)
    grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)  # 1 + G² positions
    return CLIPConfig(
        embed_dim=shape("text_projection")[1],
        image_resolution=patch * grid,
        vision_layers=sum(k.startswith("visual.") and k.endswith(".attn.in_proj_weight") for k in state_dict),
        vision_width=vision_width,
        vision_patch_size=patch,
        context_length=shape("positional_embedding")[0],
        vocab_size=shape("token_embedding.weight")[0],
        transformer_width=shape("ln_final.weight")[0],
        transformer_layers=len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")}),
    )


def build_clip(state_dict) -> CLIP:
    """A CLIP holding exactly the given tensors (same dtypes and device); any key mismatch is an error."""
    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    config = config_from_state_dict(state_dict)
    with torch.device("meta"):  # no memory or time spent on an initialisation that is overwritten
        model = CLIP(config)
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state_dict.keys()), sorted(state_dict.keys() - expected.keys())
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in sorted(expected.keys() & state_dict.keys()) if state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CLIPError(f"the weights do not match a CLIP of {config}: missing keys {missing}, unexpected keys "
                        f"{unexpected}, wrong shapes {wrong}")
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.requires_grad_(False).eval()


# ----------------------------------------------------------------------- weight files

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


_TYPED_LISTS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")  # torch.jit._pickle's


class _ScriptModule:
    """Stands in for a TorchScript module class: keeps its attributes, runs nothing."""

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return storage.as_strided(size, stride, offset)


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript archive's data.pkl, allowing only what rebuilds modules, tensors and typed lists.

    Any other global the pickle names (os.system, builtins.eval, ...) is refused, so a
    weight file cannot run code; storages are read from the zip records `<prefix>/data/<key>`.
    """

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages = {}

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptModule
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in _TYPED_LISTS:
            return list  # TorchScript's List[int], List[float], List[bool], List[Tensor] attributes: plain lists
        raise CLIPError(f"{self.path}: the archive's data.pkl asks for the Python object {module}.{name}; a CLIP "
                        f"weight archive needs only modules and tensors, so it was refused and nothing was run. "
                        f"Use weights from a source you trust")

    def persistent_load(self, pid):  # ('storage', dtype, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise CLIPError(f"{self.path}: unexpected storage record {pid!r} in data.pkl")
        _, dtype, key, _, numel = pid
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _module_tensors(module: _ScriptModule, prefix=""):
    """(dotted name, tensor) for every tensor attribute of the module tree.

    Note: for archives written by torch.jit.trace (OpenAI's) or torch.jit.script these are exactly the
    parameters and buffers; a traced module keeps other tensors as graph constants (constants.pkl, not
    read here), and tensors in a typed list attribute (List[Tensor]) are not taken.
    """
    for name, value in module.state.items():
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
        elif isinstance(value, _ScriptModule):
            yield from _module_tensors(value, f"{prefix}{name}.")


def read_state_dict(path) -> dict:
    """The tensors of an OpenAI TorchScript archive or of a torch.save'd state dict, on the CPU."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            roots = [n[: -len("/data.pkl")] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(roots) == 1 and any(n.startswith(roots[0] + "/code/") for n in names):  # TorchScript
                unpickler = _ArchiveUnpickler(archive.open(f"{roots[0]}/data.pkl"), archive, roots[0], path)
                try:
                    root = unpickler.load()
                except CLIPError:
                    raise
                except Exception as e:
                    raise CLIPError(f"{path}: malformed TorchScript archive ({type(e).__name__}: {e}); "
                                    f"download the file again") from None
                if not isinstance(root, _ScriptModule) or not isinstance(root.state, dict):
                    raise CLIPError(f"{path}: the archive holds a {type(root).__name__}, not a module")
                return {name: tensor.contiguous() for name, tensor in _module_tensors(root)}
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        with open(path, "rb") as f:
            head = f.read(16)
        raise CLIPError(  # torch's own message is pages long and suggests turning weights_only off: not repeated
            f"{path} is neither an OpenAI TorchScript archive nor a torch.save'd state dict of tensors "
            f"(torch.load with weights_only=True raised {type(e).__name__}): it is {path.stat().st_size:,} bytes "
            f"starting with {head!r}. An interrupted download is the usual cause (OpenAI's ViT-B-32.pt is "
            f"353,976,522 bytes): delete it and download it again") from None
    if not (isinstance(state_dict, dict) and all(isinstance(v, torch.Tensor) for v in state_dict.values())):
        found = type(state_dict).__name__
        if isinstance(state_dict, dict):
            found = f"a dict with keys {list(state_dict)[:8]}"
        raise CLIPError(f"{path}: expected a state dict (parameter name -> tensor), found {found}")
    return state_dict


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, path: Path, sha256: str):
    """Streams `url` into a temp file beside `path`; renames it to `path` only if its SHA256 matches."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(out):
        digest, done = hashlib.sha256(), 0
        with urllib.request.urlopen(url, timeout=60) as response:
            progress = Progress(f"downloading {path.name}", int(response.headers.get("Content-Length") or 0) or None,
                                "bytes")
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                done += len(block)
                progress.update(done)
        progress.done(f"downloaded {path.name}: {done:,} bytes")
        if digest.hexdigest() != sha256:
            raise CLIPError(f"the download of {url} has SHA256 {digest.hexdigest()} ({done:,} bytes) but should "
                            f"have {sha256}: it is truncated or corrupted, and the temp file was deleted. Run "
                            f"again, or download the file by other means to {path}")

    try:
        atomic_write(path, write)
    except OSError as e:  # includes urllib's URLError and timeouts
        raise CLIPError(f"could not download {url} ({e}). Download it by other means (e.g. a browser or curl on "
                        f"another machine) and put it at {path}, or pass the file's path instead of the name") from None


def resolve_weights(name_or_path, *, offline=False, cache_dir=CACHE_DIR) -> Path:
    """A model name (see MODELS) becomes its cached file, downloaded and verified if absent; a path stays."""
    if name_or_path not in MODELS:
        path = Path(name_or_path).expanduser()
        problem = file_problem(path)  # a FIFO would block the read, /dev/zero fill memory
        if problem:
            raise CLIPError(f"weights {name_or_path!r}: {problem}; expected a weight file or one of the names "
                            f"{list(MODELS)}")
        return path
    url = MODELS[name_or_path]
    sha256, path = url.rsplit("/", 2)[-2], Path(cache_dir) / url.rsplit("/", 1)[-1]
    if path.exists() and file_problem(path):
        raise CLIPError(f"{path}: {file_problem(path)}; expected the cached weight file: delete it and run again")
    if not path.exists():
        if offline:
            raise CLIPError(f"{name_or_path} is not in the cache and --offline forbids downloading it: download "
                            f"{url} and put it at {path} (SHA256 {sha256})")
        download(url, path, sha256)
    elif file_sha256(path) != sha256:
        raise CLIPError(f"{path} has the wrong SHA256 (expected {sha256}, {path.stat().st_size:,} bytes found), "
                        f"probably an interrupted download: delete it and run again to download it anew")
    return path


def resolve_device(name) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CLIPError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIPError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIPError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def load(name_or_path="ViT-B/32", device="auto", *, keep_fp16=False, offline=False):
    """(model, preprocess) from a model name or a weight file; weights become fp32 unless keep_fp16 on CUDA."""
    device = resolve_device(device) if isinstance(device, str) else device
    if keep_fp16 and device.type != "cuda":
        raise CLIPError("keep_fp16 is for CUDA only: on the CPU fp16 is slow and imprecise, so weights become fp32")
    model = build_clip(read_state_dict(resolve_weights(name_or_path, offline=offline)))
    if not keep_fp16:
        model = model.float()  # OpenAI stores conv, linear and projection weights in fp16
    return model.to(device), make_preprocess(model.config.image_resolution)


# ------------------------------------------------------------------------- preprocess


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _torchvision_transforms():
    """torchvision.transforms, imported here only: training, evaluation and every --help run without torchvision.
    A torchvision that is missing, or built for another torch (its import then fails with e.g. "operator
    torchvision::nms does not exist"), is a CLIPError naming both versions and the install that matches."""
    try:
        import torchvision.transforms as T
    except Exception as err:
        try:
            found = f"torchvision {importlib.metadata.version('torchvision')}"
        except importlib.metadata.PackageNotFoundError:
            found = "no torchvision"
        v = regex.match(r"2\.(\d+)\.(\d+)", torch.__version__)  # torch 2.m.p pairs with torchvision 0.(m+15).p
        build = torch.__version__.partition("+")[2]  # cpu, cu130, ...: the wheel index torch came from
        index = f" --index-url https://download.pytorch.org/whl/{build}" if build else ""
        match = (f"pip install torchvision==0.{int(v[1]) + 15}.{v[2]}{index}" if v else
                 "pip install the torchvision that https://github.com/pytorch/vision#installation lists for it")
        raise CLIPError(f"preprocessing images needs torchvision, and its import failed ({type(err).__name__}: "
                        f"{err}): torch {torch.__version__} is installed with {found}. Install the torchvision made "
                        f"for this torch: {match}") from None
    return T


def make_preprocess(resolution=224):
    """OpenAI's transform: shorter side to R (bicubic), centre crop R×R, RGB, then normalise."""
    T = _torchvision_transforms()
    return T.Compose([
        T.Resize(resolution, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(resolution),
        _to_rgb,  # after the crop, as OpenAI does: RGBA, grayscale and palette images become RGB
        T.ToTensor(),  # (3, R, R) in [0, 1]
        T.Normalize(MEAN, STD),
    ])


# -------------------------------------------------------------------------- tokenizer

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_SPLIT = regex.compile(  # special tokens, English contractions, letter runs, single digits, other symbol runs
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


def _byte_symbols() -> dict[int, str]:
    """Byte -> printable character, in vocabulary order: printable Latin-1 bytes map to themselves
    (first), the other 68 bytes to the characters 256, 257, ... (after them)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


class Tokenizer:
    """CLIP's byte-level BPE: 256 byte symbols, the same with '</w>', 48,894 merges, SOT and EOT."""

    def __init__(self, bpe_path=BPE_PATH):
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().split("\n")[1:48894 + 1]]  # line 0 is a header
        self.byte_symbols = _byte_symbols()
        symbols = list(self.byte_symbols.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {symbol: i for i, symbol in enumerate(vocab)}  # 49,408 entries
        self.merge_rank = {merge: rank for rank, merge in enumerate(merges)}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]

    @lru_cache(maxsize=100_000)
    def bpe(self, word: str) -> tuple[str, ...]:
        """Merges the lowest-ranked adjacent pair until none is in the merge list."""
        parts = (*word[:-1], word[-1] + "</w>")
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.merge_rank.get(p, math.inf))
            if best not in self.merge_rank:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
        return parts

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in _SPLIT.findall(text):
            if token in (SOT, EOT):
                ids.append(self.encoder[token])
            else:
                word = "".join(self.byte_symbols[b] for b in token.encode("utf-8"))
                ids.extend(self.encoder[part] for part in self.bpe(word))
        return ids


@lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts, context_length=77, truncate=False) -> torch.Tensor:
    """(len(texts), C) token ids: SOT, the text's ids, EOT, zero padding."""
    tokenizer = _tokenizer()
    texts = [texts] if isinstance(texts, str) else texts
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.sot, *tokenizer.encode(text), tokenizer.eot]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"{text[:60]!r}... is {len(ids)} tokens long, more than the context length "
                                 f"{context_length}; shorten it or pass truncate=True")
            ids = [*ids[: context_length - 1], tokenizer.eot]
        result[row, : len(ids)] = torch.tensor(ids)
    return result


def check_pixels(image: Image.Image, short_side: int | None = None) -> None:
    """Pillow's decompression-bomb limit as a hard limit (Pillow only warns between 1x and 2x of it), on the
    image and, with `short_side`, on the image resized to that shorter side: 60000 x 1 pixels pass the first
    test, but resized to CLIP's 224 they would be 13,440,000 x 224, about 9 GB of RGB."""
    w, h = image.width, image.height
    sizes = [(w, h)] + ([(max(w, h) * short_side // max(min(w, h), 1), short_side)] if short_side else [])
    for (width, height), what in zip(sizes, ("", f" once resized to a shorter side of {short_side}")):
        if width * height > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{w} x {h} pixels, {width * height:,}{what}: more than Pillow's "
                                               f"limit of {Image.MAX_IMAGE_PIXELS:,} (a possible decompression bomb)")
