"""Documented, understood torch-vs-Paddle differences (porting.md §8 plus the project's own).

A check may name one of these ids. It is still compared against its stage
tolerance; a miss is reported as KNOWN(id) only while the measured difference
stays within ``bound`` (the size measured when the entry was written, with a
small margin), so a regression beyond it still fails. README.md lists them.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class KnownDivergence:
    id: str
    title: str
    cause: str
    bound: float          # largest max-abs difference accepted under this entry
    per_key: tuple = ()   # ((key suffix, bound, 'abs' | 'rel'), ...) where one number does not fit every key

    def bound_for(self, key):
        """``(bound, measure)``: measure 'abs' compares max abs diff, 'rel' max relative diff."""
        for suffix, b, measure in self.per_key:
            if key.endswith(suffix):
                return b, measure
        return self.bound, "abs"


KNOWN = {d.id: d for d in [
    KnownDivergence(
        "D1", "BatchNorm running_var: torch unbiased, Paddle biased",
        "torch updates running_var with the unbiased batch variance n/(n-1), Paddle with the biased one; "
        "only the running statistics differ, train-mode outputs do not", 1e-2),
    KnownDivergence(
        "D4", "top-k ties in SOM",
        "when pixel losses tie at the K-th position, top-k membership may differ between frameworks", 1e-4),
    KnownDivergence(
        "D7", "fp32 rounding amplified by train-mode BatchNorm in a randomly initialised ResNet-50",
        "with batch statistics every BN re-normalises and amplifies ULP-level differences of the convolutions; "
        "at 2x3x128x128 torch fp32 itself differs from torch fp64 by 6.2e-5 on the FactSeg logits, Paddle fp32 "
        "from torch fp64 by 7.1e-5. In float64 both frameworks agree to <1e-10 (align/01_forward.py checks it), "
        "so the port is exact and the fp32 gap is the noise floor. The backward pass amplifies it the same way: "
        "the global gradient norm at step 0 differs by 7.8e-4 relative (8.6e-2 of ~110)", 2e-4,
        per_key=(("grad_norm_step0", 5e-3, "rel"),)),
    KnownDivergence(
        "D8", "Paddle bilinear interpolation computes its sampling weights in float32 for float64 tensors",
        "an 8->16 align_corners bilinear upsampling of unit-scale float64 data differs from torch by 6.8e-7; "
        "the float64 FactSeg check therefore agrees to ~5e-7 (encoder and FPN to <3e-10)", 2e-6),
    KnownDivergence(
        "D9", "the full model's multi-step fp32 trajectory from a random init is chaotic",
        "with the real recipe (lr 0.007, clipped gradients of norm ~100-350) the randomly initialised FactSeg "
        "amplifies rounding about 3x per step: over 10 steps the reference disagrees with itself (torch fp32 vs "
        "torch fp64) by 4.0e-3 to 6.1e-3 relative in the loss, and Paddle fp32 vs torch fp32 by 4.2e-3 to "
        "7.8e-3 (three runs and versions; loss up to 2.4e-2 abs, gradient norm 15-21 abs of ~100, parameters "
        "6.7e-2 to 7.5e-2 max / 2.8e-5 mean abs). Even in float64 the two "
        "part after step 1 because Paddle's bilinear weights are float32 (D8). Step 0 agrees (loss 4.5e-7 rel) "
        "and the recipe itself agrees over 10 steps on a well-conditioned probe (align/probe.py)", 0.2,
        per_key=(("loss_per_step", 2e-2, "rel"), ("grad_norm_before_clip", 0.5, "rel"),
                 ("params_after_steps", 0.2, "abs"))),
    KnownDivergence(
        "D10", "Paddle holds the learning rate as a float32 tensor",
        "Paddle optimizers read the LR from a float32 tensor; torch uses the Python float. In float64 training "
        "the update differs by ~3e-8 relative (1e-8 abs on FactSeg's stem after one step); in fp32 both "
        "round the same way", 0.0),
    KnownDivergence(
        "D11", "fp32 parameter gradients of the UperNet models are ill-conditioned in the reference itself",
        "at 2x3x128x128 (align/03_loss.py, conditioned random weights, train mode) a weight gradient is a sum over "
        "few positions (8x8 / 4x4 maps at strides 16 / 32), and fp32 rounding decides some ReLU gates, max-pool "
        "routes and train-mode BatchNorm cancellations: torch fp32 differs from torch fp64 by up to 8.5e-3 of a "
        "tensor's max on the compared R50 gradients (1.6e-1 on decode_head.lateral_convs.2; 1.7e-2 even with BN "
        "in eval mode), 3.8e-3 on Swin-T (there torch fp32 is the less accurate one: Paddle fp32 1.5e-3) and "
        "2.2e-4 on ViTAEv2-S. Paddle fp32 lies as close to torch fp64 as torch fp32 does (R50 1.65e-2, Swin "
        "1.5e-3, ViTAE 2.9e-4). In float64 both frameworks agree on the same gradients to "
        "<= 3e-8 of the max (grad64_* keys, strict 1e-4), so the backward port is exact; the fp32 keys grad_rel_* "
        "(gradient / the reference's max, measured <= 1.65e-2 with Paddle's im2col convolution, <= 3.8e-3 with the "
        "oneDNN one of paddle_rs/ops/conv.py) and the gradient norms are bounded here", 5e-2,
        per_key=(("grad_global_norm", 1e-3, "rel"), ("grad_norm_step0", 1e-3, "rel"))),
    KnownDivergence(
        "D12", "UperNet training in fp32: gradient norms and updated parameters carry the fp32 gradient noise (D11)",
        "10 steps of the real recipes (align/04_backward.py: batch 8 as configured, schedule compressed to the "
        "run, from the conditioned weights settled by 20 recipe steps). The losses agree to the issue's 1e-5 "
        "(Paddle fp32 vs torch fp32: 1.2e-6 / 1.7e-6 / 8.8e-6 relative for R50 / Swin-T / ViTAEv2-S; the reference "
        "vs itself, torch fp32 vs torch fp64: 4.2e-7 / 1.1e-6 / 8.7e-6; ViTAE's margin: D14), and in float64 every "
        "check agrees (loss <= 1.4e-10 rel, parameters <= 3.5e-8). The fp32 gradient norm per step differs by "
        "2.0e-3 / 1.1e-4 / 6.3e-3 relative and the parameters after 10 steps by 2.3e-5 / 7.9e-5 / 1.34e-4 max abs "
        "(mean 1.4e-8 / 4.4e-7 / 1.3e-6): the size of the reference's own fp32-vs-fp64 gaps (1.2e-3 / 2.7e-4 / "
        "2.0e-3 in the gradient norm, 2.5e-5 / 1.07e-4 / 1.07e-4 in the parameters). The fp32 "
        "gradients are noisy in the reference "
        "itself (D11: ReLU gates, max-pool routes and BN cancellations decided by rounding), SGD lr 0.01 turns that "
        "into parameter noise, and AdamW's normalised step moves parameters with small gradients by ~lr whatever "
        "the noise", 1e-2,
        per_key=(("grad_norm_per_step", 1e-2, "rel"), ("params_after_steps", 3e-4, "abs"))),
    KnownDivergence(
        "D13", "AdamW moves a parameter whose exact gradient is 0 by +-lr per step from rounding noise",
        "a conv bias followed by train-mode BatchNorm has a mathematically zero gradient (BN removes the mean); "
        "each framework computes ~1e-10 of noise there, and AdamW's normalised update m/(sqrt(v)+eps) turns any "
        "noise into a step of ~lr with the noise's sign, independently per framework. On the UperNet AdamW probe "
        "(align/04_backward.py, 10 compressed steps, sum of LRs 1.9e-4) the probe's conv.bias differs by 1.28e-5 "
        "while every other probe parameter agrees to <= 1.2e-7; the bound is the largest possible gap, "
        "2 x the sum of the LRs. (SGD leaves such a parameter at lr x noise: no visible gap.) The same mechanism "
        "moves ViTAE's PCM conv biases in the full model by up to 5.6e-5 (train_params_zero_grad_biases)", 4e-4),
    KnownDivergence(
        "D14", "ViTAEv2-S fp32 training loss: the 1e-5 check is below the reference's own reproducibility",
        "the 10-step fp32 loss of align/04_backward.py depends on rounding at the ~1e-5 level in the reference "
        "itself: the PCM weight gradients pass train-mode BatchNorm cancellations that amplify ULP-level "
        "differences ~1e4-fold (D11; their fp32 error against fp64 is ~1e-3 relative in torch), and AdamW turns "
        "that into the loss. Measured with align/reference_spread.py (torch fp32, the same weights, batch and "
        "recipe): 2 threads vs 1 thread 1.24e-5, vs 3 threads 7.1e-6, with vs without oneDNN convolutions "
        "2.07e-5, fp32 vs fp64 8.7e-6. Paddle fp32 vs torch fp32 lands anywhere in that range with any change of "
        "rounding: 9.5e-6 with Paddle's own softmax / GELU / SiLU / LayerNorm kernels, 1.22e-5 with the oneDNN "
        "ones of paddle_rs/ops/act.py, 8.8e-6 (a strict pass) once rs_linear also sums the bias gradients as "
        "torch does (swapping Paddle's GELU alone for oneDNN's, which is bit-identical to torch's, moves the "
        "step-0 gradient from 4.9e-5 to 5.2e-4 of its norm away from fp64). In float64 the 10 steps agree to "
        "1.2e-10. The check stays at 1e-5 and is reported KNOWN(D14) only between 1e-5 and the reference's "
        "largest measured spread against itself", 0.0,
        per_key=(("train_loss_per_step", 2.1e-5, "rel"),)),
]}
