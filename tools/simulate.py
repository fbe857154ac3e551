"""A simulated GPU: the trainer's own code run on fake CUDA tensors, each op's work counted, a roofline time.

    with SimulatedGPU(H200) as gpu:
        ...  # build on torch.device("cuda") and run; nothing is computed and no GPU or memory is needed
    gpu.totals()  # kernels, host syncs, FLOP, bytes moved, peak device memory, roofline seconds

PyTorch's fake tensors (`torch._subclasses.fake_tensor.FakeTensorMode`) carry shapes, dtypes and devices but
no values, and CUDA's own autocast rules apply to them as on a real GPU. A `TorchDispatchMode` above them sees
every op that would launch a kernel and records its FLOP (`torch.utils.flop_counter`'s formulas), the bytes
it reads and writes, and its dtype. Host work (the CPU batch, the shuffle) runs for real.

A host sync is anything that makes the host wait for the device: reading a device value (`.item()`,
`if tensor:`), an op whose output shape depends on device data (`nonzero`, boolean-mask indexing), a blocking
copy between host and device. Each is counted with the line that asked for it. Where the answer is a small
integer tensor that came from the host (a batch's padding), it is computed from the real values kept beside
the fake ones, so code with syncs still runs and its syncs are counted; other device values read by the host
are answered with a neutral value (0, True).

Roofline: each kernel takes max(bytes / bandwidth, FLOP / peak rate of its dtype) plus a launch cost, and a
sync adds the time the device idles while the host catches up. The host pays for each kernel too: the eager op
with autograd through the dispatcher (EAGER_OP_S, measured by `python -m tools.simulate`) and the launch
(LAUNCH_S); an op run on the host's own tensors costs EAGER_OP_S. These are estimates from stated figures.
Pinned memory and CUDA events stand in as ordinary memory and events that are always done, and a copy to the
host is a real tensor (of the values kept beside the fake ones, else zeros), so `Trainer.train_epoch` runs as is.
Autograd's C++ engine needs a real CUDA context, so inside the simulation `Tensor.backward` walks the same
graph in Python: the same backward formulas and kernels, in a valid order. Attention runs as the kernel a
GPU would pick (`efficient_attention`), which a fake device cannot choose by itself.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time
import traceback
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException, FakeTensor,
                                           FakeTensorMode, unset_fake_temporarily)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten
HERE = str(Path(__file__).resolve().parent.parent)  # the project: its files, not torch's


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float  # device memory
    bandwidth: float  # bytes/s that elementwise and memory-bound kernels reach
    peak: dict  # FLOP/s of matrix products by input dtype, and "tf32": fp32 products under TF32
    launch_s: float  # per kernel, the device's gap between queued kernels
    sync_s: float  # per host sync: the device idles while the host sees the value and queues the next kernels


# effective rates, not datasheet peaks: ~4 of HBM3e's 4.8 TB/s; bf16 products at about half the 989 dense
# TFLOP/s; fp32 products in TF32 (cuBLAS's products under torch.set_float32_matmul_precision("high")) at about half
# its 495 dense TFLOP/s, half the bf16 rate as on the datasheet; fp32 products (TF32 off) at ~50 of 67 TFLOP/s
# a kernel queued behind others costs the device ~2 µs of its own (ramp-up and drain)
H200 = GPU("H200", memory_gb=141, bandwidth=4.0e12,
           peak={torch.bfloat16: 4.0e14, torch.float16: 4.0e14, "tf32": 2.0e14, torch.float32: 5.0e13}, launch_s=2e-6,
           sync_s=5e-5)
GPUS = {"h200": H200}

# The host's time to issue one kernel from eager PyTorch with autograd, launch aside (Python, the dispatcher,
# autograd's graph and engine): `python -m tools.simulate` measures it (`eager_op_seconds`: the forward and backward
# of a chain of the encoders' ops at width 16 on one CPU thread, the best of 1,000 runs, over its kernels), here on
# the 2-core AMD EPYC of docs/performance.md. Kept as a constant, measured once, so that a projection does not move
# with the load of the machine it runs on.
EAGER_OP_S = 10.4e-6
# the host's side of a kernel launch or an asynchronous copy (cudaLaunchKernel, cudaMemcpyAsync): 2-5 µs in
# published measurements; a CPU cannot measure it
LAUNCH_S = 3e-6

NO_KERNEL = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.new_empty.default,
             aten.new_empty_strided.default, aten.detach.default, aten.lift_fresh.default, aten._unsafe_view.default,
             aten.alias.default, aten.set_.source_Storage, aten.set_.source_Storage_storage_offset}
FILLS = {aten.new_zeros.default, aten.new_ones.default, aten.new_full.default, aten.zeros_like.default,
         aten.ones_like.default, aten.full_like.default, aten.zeros.default, aten.ones.default, aten.full.default}
GATHERS = {aten.index.Tensor, aten.index_select.default, aten.gather.default, aten.embedding.default}
MATMULS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}  # cuBLAS's products: TF32 when the precision allows
SHADOW_MAX = 1 << 22  # integer tensors up to this size keep their real values beside the fake ones


def nbytes(t: torch.Tensor) -> int:
    """The bytes a kernel reads or writes of t: an expanded dimension (stride 0) is read once."""
    return math.prod(n for n, stride in zip(t.shape, t.stride()) if stride) * t.element_size()


def is_kernel(func) -> bool:
    """Whether an op launches a kernel: not a view, an allocation or a metadata query (prim.device, ...)."""
    return not (func.is_view or func in NO_KERNEL or func.namespace != "aten")


def where_called() -> str:
    """The project line that led to the current op (outside torch)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(HERE) and not frame.filename.endswith("tools/simulate.py"):
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
    return "?"


class Counting(TorchDispatchMode):
    """Records every op that reaches a fake device tensor; runs the others (host work) for real."""

    def __init__(self, gpu: GPU):
        super().__init__()
        self.gpu = gpu
        self.shadow = WeakTensorKeyDictionary()  # fake integer tensor -> its real values
        self.transient = tuple  # keep_on_chip's callable: nothing by default
        self.reset()
        self.live = self.peak = 0

    def reset(self) -> None:
        self.kernels, self.flop, self.bytes, self.seconds, self.host_seconds = 0, 0.0, 0, 0.0, 0.0
        self.syncs, self.casts = Counter(), Counter()  # {what and where: count}, {(n, d) cast: count}
        # the same work if the buffers in `self.transient` never left the chip (a fused kernel): bytes, seconds
        self.fused_bytes, self.fused_seconds = 0, 0.0

    def keep_on_chip(self, buffers) -> None:
        """`buffers()` -> the tensors whose bytes a fused kernel would keep on the chip (the score buffers)."""
        self.transient = buffers

    def start_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_leaves((args, kwargs))
        fake = any(isinstance(t, FakeTensor) for t in leaves) or \
            any(isinstance(t, torch.device) and t.type == "cuda" for t in leaves) or kwargs.get("device") == "cuda"
        if not fake:  # host work: real tensors, run for real
            self.host_seconds += EAGER_OP_S * is_kernel(func)
            if func in (aten._pin_memory.default, aten.is_pinned.default):  # page-locked memory: ordinary memory
                return args[0] if func is aten._pin_memory.default else True
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        src = args[0] if args else None
        if func is aten._to_copy.default and isinstance(src, FakeTensor) and \
                torch.device(kwargs.get("device") or src.device).type == "cpu":
            out = self.to_host(src, kwargs.get("dtype"))  # device -> host: real values the host can read
            self.record(func, args, kwargs, out)
            return out
        if func is aten._to_copy.default and not isinstance(src, FakeTensor):  # host -> device: a new device tensor
            out = self.to_fake(src, kwargs.get("dtype"))
            self.record(func, args, kwargs, out)
            return out
        try:
            out = func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException):
            out = self.answer_from_host(func, args, kwargs)
        if func is aten._local_scalar_dense.default:
            return out
        self.record(func, args, kwargs, out)
        self.keep_shadow(func, args, kwargs, out)
        return out

    # --------------------------------------------------------------------- syncs

    def real(self, x):
        """The real values of x: a real tensor, or a fake one's shadow; None where unknown."""
        if isinstance(x, FakeTensor):
            return self.shadow.get(x)
        return x

    def answer_from_host(self, func, args, kwargs):
        """A data-dependent op on the device: a host sync. Answered from the shadows where they exist."""
        self.syncs[f"{func.__name__}: {where_called()}"] += 1
        real = [self.real(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if all(r is not None for r in real):
            with unset_fake_temporarily():
                result = func(*tree_map(self.real, args), **tree_map(self.real, kwargs))
            if func is aten._local_scalar_dense.default:
                return result
            return tree_map(lambda r: self.to_fake(r) if isinstance(r, torch.Tensor) else r, result)
        if func is aten.index.Tensor and all(i is None or i.dtype != torch.bool or self.real(i) is not None
                                             for i in args[1]):  # x[mask]: the mask's positions, as indices
            indices = []
            for i in args[1]:
                if i is not None and i.dtype == torch.bool:
                    with unset_fake_temporarily():
                        positions = self.real(i).nonzero().unbind(1)
                    indices += [self.to_fake(p) for p in positions]
                else:
                    indices.append(i)
            return func(args[0], indices)
        if func is aten._local_scalar_dense.default:  # a device value read by the host: a neutral answer
            dtype = args[0].dtype
            return True if dtype == torch.bool else 0 if not dtype.is_floating_point else 0.0
        raise RuntimeError(f"simulated GPU: {func.__name__} depends on device values at {where_called()}")

    def to_fake(self, real: torch.Tensor, dtype=None) -> torch.Tensor:
        """A device tensor like `real` (made here: fake mode would copy a one-element tensor for real), which
        keeps real's values as its shadow when it is a small integer tensor."""
        fake = aten.empty_strided.default(real.shape, real.stride(), dtype=dtype or real.dtype,
                                          device=torch.device("cuda", 0))
        if not fake.is_floating_point() and fake.numel() <= SHADOW_MAX:
            with unset_fake_temporarily():
                self.shadow[fake] = real.to(fake.dtype)
        return fake

    def to_host(self, fake: torch.Tensor, dtype=None) -> torch.Tensor:
        """A device tensor copied to the host: a real tensor of its shadow's values, or zeros where none is kept."""
        with unset_fake_temporarily():
            real = self.shadow.get(fake)
            real = torch.zeros(fake.shape, dtype=fake.dtype) if real is None else real.clone()
            return real.to(dtype or fake.dtype)

    def keep_shadow(self, func, args, kwargs, out) -> None:
        """Integer outputs computed only from host values (or shadows) keep their real values."""
        outs = [t for t in tree_leaves(out) if isinstance(t, FakeTensor)]
        if not outs or any(t.is_floating_point() or t.numel() > SHADOW_MAX for t in outs):
            return
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not inputs or any(self.real(t) is None for t in inputs) or func.is_view and len(inputs) > 1:
            return
        with unset_fake_temporarily():
            real = func(*tree_map(self.real, args), **tree_map(self.real, kwargs))
        for fake, r in zip(tree_leaves(out), tree_leaves(real)):
            if isinstance(fake, FakeTensor) and isinstance(r, torch.Tensor):
                self.shadow[fake] = r

    # --------------------------------------------------------------------- work

    def record(self, func, args, kwargs, out) -> None:
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        fresh = not func.is_view and func not in (aten.detach.default, aten.alias.default)
        for t in outputs:  # device memory: every fresh output (not a view, not an input written in place) until freed
            if isinstance(t, FakeTensor) and fresh and not any(t is i for i in inputs):
                size = nbytes(t)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self.free, size)
        if func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst = outputs[0]
            if src.device.type != dst.device.type:  # host <-> device
                if not kwargs.get("non_blocking", args[2] if func is aten.copy_.default and len(args) > 2
                                  else False):
                    self.syncs[f"blocking copy {src.device.type} -> {dst.device.type}: {where_called()}"] += 1
                self.host_seconds += EAGER_OP_S + LAUNCH_S
                return  # a DMA transfer, not a kernel: its time overlaps the device's work when non-blocking
            if src.dtype != dst.dtype and src.dim() == 2 and src.shape[0] >= 1000:  # an (n, d) matrix cast
                self.casts[f"{tuple(src.shape)} {src.dtype} -> {dst.dtype}"] += 1
        elif not is_kernel(func):
            return
        read = 0 if func in FILLS else sum(nbytes(t) for t in inputs)  # a fill reads only its input's metadata
        if func in GATHERS:  # reads the rows it gathers, not the whole source
            read = sum(nbytes(t) for t in outputs) + sum(nbytes(t) for t in inputs[1:] if t.dtype == torch.long)
        written = sum(nbytes(t) for t in outputs)
        if func in (aten.index_add_.default, aten.index_put_.default, aten.scatter_add_.default):
            read = written = sum(nbytes(t) for t in inputs[1:])  # touches only the rows it adds into
        flop = 0
        if func._overloadpacket in flop_registry:
            flop = flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)
        if dtype == torch.float32 and func._overloadpacket in MATMULS and \
                torch.get_float32_matmul_precision() != "highest":
            dtype = "tf32"
        peak = self.gpu.peak.get(dtype, self.gpu.peak[torch.float32])
        self.kernels += 1
        self.host_seconds += EAGER_OP_S + LAUNCH_S
        self.flop += flop
        self.bytes += read + written
        self.seconds += max((read + written) / self.gpu.bandwidth, flop / peak) + self.gpu.launch_s
        transient = {t.untyped_storage()._cdata for t in self.transient()}
        on_chip = sum(nbytes(t) for t in inputs + outputs if t.untyped_storage()._cdata in transient)
        if on_chip < read + written or flop:  # a pass over the buffer alone would be part of the fused kernel
            self.fused_bytes += read + written - on_chip
            self.fused_seconds += max((read + written - on_chip) / self.gpu.bandwidth, flop / peak) + \
                self.gpu.launch_s

    def free(self, size: int) -> None:
        self.live -= size

    def totals(self) -> dict:
        syncs = sum(self.syncs.values())
        return {"kernels": self.kernels, "syncs": syncs, "flop": self.flop, "bytes": self.bytes,
                "peak_bytes": self.peak, "seconds": self.seconds + syncs * self.gpu.sync_s,
                "host_seconds": self.host_seconds,
                "fused_bytes": self.fused_bytes, "fused_seconds": self.fused_seconds + syncs * self.gpu.sync_s}


def python_backward(tensor: torch.Tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None) -> None:
    """`Tensor.backward` for the simulation: each node of the autograd graph called once, after every node
    that feeds it (the order the C++ engine also respects); leaves accumulate into .grad as usual."""
    assert not create_graph and inputs is None, "the simulation runs plain first-order backward passes"
    root = tensor.grad_fn
    waiting, seen, stack = Counter(), {root}, [root]
    while stack:
        node = stack.pop()
        for parent, _ in node.next_functions:
            if parent is not None:
                waiting[parent] += 1
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
    grads = {root: {0: torch.ones_like(tensor) if gradient is None else gradient}}
    ready = [root]
    with torch.no_grad():
        while ready:
            node = ready.pop()
            given = grads.pop(node, {})
            if type(node).__name__ == "AccumulateGrad":  # a leaf: the engine hands it the gradient, copying nothing
                leaf, g = node.variable, given.get(0)
                if g is not None:
                    leaf.grad = g if leaf.grad is None else leaf.grad.add_(g)
                continue
            call = node if callable(node) else node.apply  # a C++ node, or a Python autograd.Function's
            outs = call(*(given.get(i) for i in range(len(node._input_metadata))))
            for (parent, i), g in zip(node.next_functions, outs if isinstance(outs, tuple) else (outs,)):
                if parent is None:
                    continue
                if g is not None:  # as the engine does: a broadcast input's gradient summed to its shape, its dtype
                    meta = parent._input_metadata[i]
                    if tuple(g.shape) != tuple(meta.shape):
                        g = g.sum_to_size(meta.shape)
                    g = g.to(meta.dtype)
                    slot = grads.setdefault(parent, {})
                    slot[i] = g if i not in slot else slot[i] + g
                waiting[parent] -= 1
                if waiting[parent] == 0:
                    ready.append(parent)


def efficient_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """`F.scaled_dot_product_attention` as a CUDA GPU runs it for a boolean mask: the mask made an additive
    bias, then the memory-efficient kernel (one kernel forward, one backward). A fake device cannot run
    PyTorch's choice of kernel, which would otherwise fall back to the unfused math (about ten kernels)."""
    assert not enable_gqa, "the simulation runs attention with as many key as query heads"
    bias = attn_mask
    if bias is not None and bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=q.dtype, device=q.device).masked_fill_(~bias, -math.inf)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return aten._scaled_dot_product_efficient_attention(q, k, v, bias, needs_grad, dropout_p, is_causal,
                                                        scale=scale)[0]


@contextlib.contextmanager
def simulated_gpu(gpu: GPU = H200):
    """Inside: torch.device("cuda") is a fake GPU (no memory, no values) and every op on it is counted by the
    `Counting` mode this yields."""
    saved = (torch.cuda.is_available, torch.cuda.is_bf16_supported, torch.Tensor.backward,
             torch.cuda.mem_get_info, F.scaled_dot_product_attention,
             torch.__future__.get_overwrite_module_params_on_conversion())
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # module.to("cuda") takes fake tensors
    counting = Counting(gpu)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), counting:
            # after the fake mode has set a no-op CUDA device guard: from here on CUDA looks present
            torch.cuda.is_available = lambda: True
            torch.cuda.is_bf16_supported = lambda *a, **k: True
            torch.cuda.mem_get_info = lambda *a, **k: (int(gpu.memory_gb * 1e9) - counting.live,
                                                       int(gpu.memory_gb * 1e9))
            torch.Tensor.backward = python_backward
            F.scaled_dot_product_attention = efficient_attention
            yield counting
    finally:
        (torch.cuda.is_available, torch.cuda.is_bf16_supported, torch.Tensor.backward,
         torch.cuda.mem_get_info, F.scaled_dot_product_attention) = saved[:5]
        torch.__future__.set_overwrite_module_params_on_conversion(saved[5])


def roofline_note(gpu: GPU) -> str:
    rates = ", ".join(f"{str(k).removeprefix('torch.')} {v / 1e12:.0f} TFLOP/s" for k, v in gpu.peak.items())
    return (f"{gpu.name}: {gpu.memory_gb:.0f} GB, {gpu.bandwidth / 1e12:.1f} TB/s, products {rates}, "
            f"{gpu.launch_s * 1e6:.0f} µs a kernel, {gpu.sync_s * 1e6:.0f} µs a host sync; the host: "
            f"{EAGER_OP_S * 1e6:.1f} µs an eager op, {LAUNCH_S * 1e6:.0f} µs a launch")


class KernelCount(TorchDispatchMode):
    """Counts the kernels (`is_kernel`) of real ops run inside it."""

    def __init__(self):
        super().__init__()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.kernels += is_kernel(func)
        return func(*args, **(kwargs or {}))


def eager_op_seconds(layers: int = 10, width: int = 16, runs: int = 1000) -> float:
    """The host's time per kernel of eager PyTorch with autograd (EAGER_OP_S): the forward and backward of a chain of
    the encoders' ops (layer norm, linear, ReLU, residual add: one kernel each on a CPU as on a GPU) on CPU tensors
    of `width` columns, whose own arithmetic takes a fraction of a µs; one thread, the best of `runs` runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, width, generator=g, requires_grad=True)
    params = [[torch.randn(*shape, generator=g).requires_grad_() for shape in ((width,), (width,), (width, width),
                                                                               (width,))] for _ in range(layers)]

    def chain():
        y = x
        for gamma, beta, W, b in params:
            y = y + F.linear(F.layer_norm(y, (width,), gamma, beta), W, b).relu()
        y.sum().backward()
        for p in [x, *(p for layer in params for p in layer)]:
            p.grad = None

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(20):  # warm-up
            chain()
        with KernelCount() as count:
            chain()
        best = math.inf
        for _ in range(runs):
            start = time.perf_counter()
            chain()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best / count.kernels


if __name__ == "__main__":  # python -m tools.simulate: EAGER_OP_S measured on this machine
    argparse.ArgumentParser(description="Measures EAGER_OP_S, the host's time per kernel of eager PyTorch with "
                            "autograd, on this machine (run it on idle cores); `python -m tools.benchmark "
                            "--simulate` runs the simulation.").parse_args()
    print(f"an eager op with autograd: {eager_op_seconds() * 1e6:.1f} µs of host time a kernel "
          f"(EAGER_OP_S in tools/simulate.py: {EAGER_OP_S * 1e6:.1f} µs)")
