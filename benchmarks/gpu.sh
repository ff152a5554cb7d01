#!/usr/bin/env bash
# ppgen on a GPU machine, in one go (a few minutes; not part of CI, which has no GPU):
#   1. SVI throughput of both engines (784-400-50 VAE, batch 256) beside plain torch  [benchmarks/svi_vae.py]
#   2. a diffusion training step (U-Net on MNIST, torch and JAX engines) and sampling  [benchmarks/diffusion.py]
#      and the CIFAR-10 estimate: 50 timed steps of the 128-channel U-Net at batch 128   [benchmarks/cifar_estimate.py]
#   3. NUTS ESS/s on VAE latents (JAX on its default device: the GPU with jax[cuda12])  [benchmarks/nuts_latents.py]
#   4. with 2+ GPUs: data-parallel images/s and the NCCL all-reduce per step            [benchmarks/scaling.py]
#   5. every family and backend trains one epoch with --device cuda                     [ppgen train]
#   6. with LEADERBOARD=1 only (hours, not minutes): the full-MNIST leaderboard at the papers' epochs (Burda et al.'s
#      3,280; the Ladder VAE 2,000; the rows whose paper states none, 3,280), test NLL by IWAE-5000 on all 10,000
#      test digits (the DDPM: L_vlb), then AIS with BDMC on the best two rows   [benchmarks/mnist_table.py]
#   7. with M2TABLE=1 only: the M2 table: full MNIST, 100/600/1000/3000 labels x 5 label sets, 50 epochs     [benchmarks/m2_table.py]
#      (20 trainings; the longest step here)
#   8. with QUALITY=1 only: sample quality on full MNIST, VAE/GAN/VQ-VAE/DDPM at 1W, 4W, 30W, 3 seeds, 10,000
#      samples each, the budget on the wall clock (a GPU's time is not the process's CPU time)  [benchmarks/mnist_quality.py]
# Usage: bash benchmarks/gpu.sh [OUT_DIR]   (default runs/gpu; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-runs/gpu}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} MPLBACKEND=Agg
mkdir -p "$OUT"
log() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

$PY - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("benchmarks/gpu.sh: no CUDA GPU visible to torch; run it on a GPU machine")
print(f"torch {torch.__version__}: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
import jax
print(f"jax {jax.__version__}: backend {jax.default_backend()} {jax.devices()}"
      + ("" if jax.default_backend() == "gpu" else "  (CPU-only jaxlib: the JAX rows run on the CPU; "
         "pip install 'jax[cuda12]' for the GPU)"))
PY

log "1. SVI throughput, both engines"
$PY benchmarks/svi_vae.py --device cuda --quick --json "$OUT/svi_vae.json" | tee "$OUT/svi_vae.txt"

log "2. diffusion: training step and sampling (U-Net, MNIST 28x28)"
$PY benchmarks/diffusion.py speed --data mnist --denoiser unet --device cuda --rounds 10 --samples 256 \
    --json "$OUT/diffusion.json" | tee "$OUT/diffusion.txt"
$PY benchmarks/cifar_estimate.py --device cuda --steps 50 --amp bf16 | tee "$OUT/cifar_estimate.txt"

log "3. NUTS ESS/s (16 digits x 2 chains, VAE latents)"
$PY benchmarks/nuts_latents.py --epochs 3 --digits 16 --skip-pyro | tee "$OUT/nuts.txt"

GPUS=$($PY -c 'import torch; print(torch.cuda.device_count())')
if [ "$GPUS" -ge 2 ]; then
    log "4. data parallel over 2 GPUs (NCCL)"
    $PY benchmarks/scaling.py allreduce --device cuda | tee "$OUT/allreduce.txt"
    $PY -m ppgen train vae --data mnist --epochs 3 --device cuda --nproc 2 --no-progress --out "$OUT/ddp-vae" \
        | tee "$OUT/ddp.txt"
else
    log "4. data parallel: skipped (one GPU)"
fi

log "5. every family and backend, one epoch on cuda"
train() { name=$1; shift; printf '%-22s' "$name"; \
    $PY -m ppgen train "$@" --epochs 1 --device cuda --no-progress --overwrite --out "$OUT/families/$name" \
        > "$OUT/families/$name.log" 2>&1 && echo ok || { echo "FAILED (see $OUT/families/$name.log)"; FAILED=1; }; }
mkdir -p "$OUT/families"
FAILED=0
train vae-torch vae --data mnist --engine torch
train vae-jax vae --data mnist --engine jax
train dlgm dlgm --data digits
train hvae hvae --data digits
train lvae lvae --data digits
train nade nade --data digits
train vqvae vqvae --data digits --downsample 1
train ddpm-mlp ddpm --data digits
train ddpm-unet ddpm --data mnist --denoiser unet
train gpvae gpvae --data digits
train ppca ppca --data ring8
train factor-analysis factor_analysis --data ring8
train prodlda prodlda --data news
train dirvae dirvae --data news
train gan-ns gan --data ring8
train gan-wgan-gp gan --data ring8 --loss wgan-gp
train bigan-ali gan --data ring8 --encoder --loss ali
train vae-adversarial vae --data mnist --backend adversarial --likelihood gaussian --binarize none

if [ "${LEADERBOARD:-0}" = 1 ]; then
    log "6. full-MNIST leaderboard at the papers' epochs"
    $PY benchmarks/mnist_table.py train --rows vae-k1,iwae-k5,iwae-k50,vae2-k1,iwae2-k50,lvae,dlgm,nade,vqvae,pixelcnn-vae,ddpm \
        --epochs paper --lr-final 0.1 --prior-epochs 100 --device cuda --k 5000 --test-points 0 --out "$OUT/mnist_table" \
        | tee "$OUT/mnist_table.txt"
    $PY benchmarks/mnist_table.py ais "$OUT/mnist_table" --rows lvae,iwae2-k50 --points 100 --steps 10000 \
        --chains 16 --leapfrog 10 --bdmc 20 --device cuda | tee -a "$OUT/mnist_table.txt"
    $PY benchmarks/mnist_table.py report "$OUT/mnist_table" --figure "$OUT/mnist_table/curves.png" \
        | tee -a "$OUT/mnist_table.txt"
else
    log "6. full-MNIST leaderboard: skipped (LEADERBOARD=1 runs it, hours)"
fi
if [ "${M2TABLE:-0}" = 1 ]; then
    log "7. M2 on the full MNIST: 4 label counts x 5 label sets (Pyro's ss-vae tutorial's table)"
    # grey levels: the tutorial's convention (and 0.028 +- 0.005 more test accuracy at 100 labels, 5 sets, docs/m2.md)
    $PY benchmarks/m2_table.py --device cuda --precision bfloat16 --grey-levels --json "$OUT/m2_table.json" | tee "$OUT/m2_table.txt"
else
    log "7. M2 table: skipped (M2TABLE=1 runs it: 20 trainings)"
fi
if [ "${QUALITY:-0}" = 1 ]; then
    log "8. sample quality on full MNIST at equal time: 4 families x 3 seeds to 30W"
    $PY benchmarks/mnist_quality.py train --seeds 0,1,2 --budgets 1,4,30 --w 10 --n 10000 --device cuda \
        --clock wall --results "$OUT/mnist_quality.jsonl" --grids "$OUT/mnist_quality" | tee "$OUT/mnist_quality.txt"
    $PY benchmarks/mnist_quality.py report --results "$OUT/mnist_quality.jsonl" --grids "$OUT/mnist_quality" \
        --figure "$OUT/mnist_quality/samples.png" | tee -a "$OUT/mnist_quality.txt"
else
    log "8. sample quality on full MNIST: skipped (QUALITY=1 runs it)"
fi
exit $FAILED
