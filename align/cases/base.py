"""Base class of a family's parity recipe (forward, metric, loss, backward)."""
import numpy as np


class ParityCase:
    family = ""
    default_models = ()
    CHECKS = ()      # the declared Check of every key the stages add (align/harness.py)

    def __init__(self, model_name, size=None, full=False, seed=0, steps=10, cpu_kernels="auto"):
        from paddle_rs.cpu_kernels import resolve
        self.name, self.full, self.seed, self.steps = model_name, full, seed, steps
        self.size = size
        self.cpu_kernels = resolve(cpu_kernels)     # the Paddle side runs accelerated (paddle_rs.cpu_kernels)

    # -- helpers shared by all families ---------------------------------------------------------
    @staticmethod
    def log_train_forward(log, pair, pair64, tx, px, names):
        """Train-mode forward of both frameworks without gradients (BatchNorm on batch statistics), fp32 then
        float64: the outputs as ``train_<name>`` / ``train_<name>_fp64``, the BatchNorm running-statistic updates of
        the fp32 forward, and a note on how far each framework's fp32 first output is from torch's float64 one."""
        import paddle
        import torch

        from align.training import bn_forward_gaps
        (tm, pm), (tm64, pm64) = pair, pair64
        for m in (tm, pm, tm64, pm64):
            m.train()
        with bn_forward_gaps(tm, pm) as bn:
            with torch.no_grad():
                tout = tm(tx)
            with paddle.no_grad():
                pout = pm(px)
        for name, a, b in zip(names, tout, pout):
            log.add(f"train_{name}", a, b)
        log.add_gap("train_bn_running_mean", bn.mean, bn.names)
        log.add_gap("train_bn_running_var_d1", bn.var, bn.names)
        with torch.no_grad():
            tout64 = tm64(tx.double())
        with paddle.no_grad():
            pout64 = pm64(px.astype("float64"))
        for name, a, b in zip(names, tout64, pout64):
            log.add(f"train_{name}_fp64", a, b)
        ref = tout64[0].numpy()
        gap_ref = float(np.abs(tout[0].numpy().astype(np.float64) - ref).max())
        gap_port = float(np.abs(pout[0].numpy().astype(np.float64) - ref).max())
        log.notes.append(f"train {names[0].replace('_', ' ')} vs torch fp64: torch fp32 {gap_ref:.2e}, paddle fp32 "
                         f"{gap_port:.2e}")

    def build_pair(self, dtype="float32", prepare=None, state=None, **overrides):
        """Torch reference from its seeded random init and the Paddle port loaded from it through convert/, both in
        eval mode. ``prepare(tm)``: applied to the fp32 reference before anything else (e.g. conditioning, see
        align/weights.py); ``state``: a torch state dict loaded after it (e.g. :meth:`settle`'s); ``dtype`` float64
        converts the reference after that, so both dtypes start from the same float32 weights."""
        import paddle
        import torch

        from convert.api import build_pair, copy_torch_to_paddle
        torch.manual_seed(self.seed)
        prev = paddle.get_default_dtype()
        paddle.set_default_dtype(dtype)
        try:
            tm, pm = build_pair(self.name, **overrides)
        finally:
            paddle.set_default_dtype(prev)
        if prepare is not None:
            prepare(tm)
        if state is not None:
            tm.load_state_dict(state)
        if dtype == "float64":
            tm = tm.double()
        copy_torch_to_paddle(tm, pm)
        if self.cpu_kernels:
            from paddle_rs.cpu_kernels import accelerate
            accelerate(pm)
        tm.eval(), pm.eval()
        return tm, pm

    def settle(self, prepare, recipe, x, y, steps, torch_batch=None, **overrides):
        """The reference after ``steps`` iterations of ``recipe`` on ``(x, y)`` (torch fp32, train mode) from its
        seeded init and ``prepare``: ``(state_dict, losses, optimizer_state)``. A start for multi-step
        comparisons that is what fine-tuning starts from, instead of the first, most violent steps of a random
        init (the optimizer state in :func:`align.training.torch_optimizer_state` form)."""
        import torch

        import torch_ref
        from align.training import train_pair
        torch.manual_seed(self.seed)
        tm = torch_ref.build_model(self.name, **overrides)
        if prepare is not None:
            prepare(tm)
        tm.train()
        r = train_pair(tm, None, recipe, x, y, steps, torch_only=True, torch_batch=torch_batch)
        return {k: v.detach().clone() for k, v in tm.state_dict().items()}, r["t"]["loss"], r["t_optimizer_state"]

    @staticmethod
    def trainable_params(tm, pm):
        """All trainable parameters of both models as flat vectors, Paddle mapped back through convert/."""
        from convert.rules import paddle_to_torch
        psd = paddle_to_torch({k: v.numpy() for k, v in pm.state_dict().items()}, tm, pm)
        names = [n for n, p in tm.named_parameters() if p.requires_grad]
        t = np.concatenate([tm.get_parameter(n).detach().numpy().ravel() for n in names])
        p = np.concatenate([psd[n].numpy().ravel() for n in names])
        return t, p

    @staticmethod
    def to_torch(x):
        import torch
        return torch.from_numpy(np.ascontiguousarray(x))

    @staticmethod
    def to_paddle(x):
        import paddle
        return paddle.to_tensor(np.ascontiguousarray(x))

    # -- benchmark hooks (tools/benchmark.py) ---------------------------------------------------------
    def bench_batch(self, batch):
        """(inputs, labels) numpy arrays of the given batch size."""
        raise NotImplementedError

    def train_step_fns(self, tm, pm, x, y):
        """Two callables doing one real training step (loss, backward, optimizer) in torch and Paddle."""
        raise NotImplementedError

    # -- stages: each adds keys to a StageLog ---------------------------------------------------------
    def forward(self, log):
        raise NotImplementedError

    def metric(self, log):
        raise NotImplementedError

    def loss(self, log):
        raise NotImplementedError

    def backward(self, log):
        raise NotImplementedError
