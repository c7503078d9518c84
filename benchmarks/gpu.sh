#!/usr/bin/env bash
# The results page's GPU figures in one call of at most 9.5 minutes on one
# recent data-centre GPU. Each stage has its own `timeout` (270 + 2 x (110 + 45)
# seconds), so an overrun costs that stage alone; STAGES="speed" or
# STAGES="train" runs one of them:
#
#   1. the recipes' training steps at the papers' sizes (width 64, z in R^100,
#      batch 100, 32x32x3): eager, --channels-last, compiled with it, with
#      --amp bf16 (eager and compiled), --amp fp16, and compiled with
#      --compile-mode reduce-overhead (CUDA graphs), interleaved in one
#      process, with pass counts (benchmarks/recipe_speed.py);
#   2. the latent EBM (raw energy) trained on MNIST without the 4s at the
#      paper's size, once with --amp bf16 --compile --channels-last and once
#      with --amp fp16 --channels-last, each then scored by kldiv.evaluate
#      (FD, RMSE, OOD AUROCs, AUPRC of the 4s).
#
#   bash benchmarks/gpu.sh DATA [OUT]
#
# DATA holds MNIST/raw and FashionMNIST/raw in torchvision's layout (as
# ../shared/data does), or is a .tar.gz of such a folder, made with
#   tar -czf data.tar.gz -C ../shared/data MNIST FashionMNIST
# OUT (default runs/gpu) receives speed.txt, speed.json, the two runs and
# their evaluation.json. STEPS (default 3000) sets the training length; SMALL=1
# shrinks everything to a smoke test that also runs on a CPU (without
# torch.compile, whose compilation would take most of it there).
set -uo pipefail
data=${1:?usage: bash benchmarks/gpu.sh DATA [OUT]}
out=${2:-runs/gpu}
steps=${STEPS:-3000}
mkdir -p "$out"
if [[ $data == *.tar.gz ]]; then
    mkdir -p "$out/data" && tar -xzf "$data" -C "$out/data" && data=$out/data
fi
for set in MNIST FashionMNIST; do
    [[ -d $data/$set/raw ]] || { echo "gpu.sh: $data/$set/raw is missing (see the header)" >&2; exit 2; }
done
if [[ ${SMALL:-0} == 1 ]]; then
    device=${DEVICE:-auto}
    speed=(--width 8 --latent-dim 8 --batch-size 8 --image-size 16 --repeats 2 --warmup 1
           --variants eager,channels-last,channels-last+bf16,channels-last+fp16)
    compile=()
    size=(--width 8 --latent-dim 8)
    steps=${STEPS:-20}
    score=(--samples 200 --test-images 300)
else
    device=${DEVICE:-cuda}
    speed=(--repeats 15 --variants eager,channels-last,compile+channels-last,channels-last+bf16,compile+channels-last+bf16,channels-last+fp16,compile-reduce-overhead+channels-last+bf16)
    compile=(--compile)
    size=(--width 64 --latent-dim 100)
    score=()
fi
python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" \
    | tee "$out/machine.txt"
status=0
stages=${STAGES:-speed train}
if [[ $stages == *speed* ]]; then
    timeout 270 python benchmarks/recipe_speed.py --device "$device" "${speed[@]}" --json "$out/speed.json" \
        2>&1 | tee "$out/speed.txt" || status=1
fi
[[ $stages == *train* ]] || exit $status
common=(--data mnist --data-root "$data" --hold-out 4 --steps "$steps" --batch-size 100 "${size[@]}"
        --no-bounded --channels-last --device "$device" --log-every $((steps / 10 > 0 ? steps / 10 : 1))
        --sample-every "$steps" --checkpoint-every "$steps")
for amp in bf16 fp16; do
    extra=(--amp "$amp")
    [[ $amp == bf16 ]] && extra+=("${compile[@]}")
    run=$out/latent_ebm_$amp
    rm -rf "$run"
    if timeout 110 python recipes/latent_ebm.py "${common[@]}" "${extra[@]}" --out "$run" > "$out/latent_ebm_$amp.log" 2>&1; then
        timeout 45 python -m kldiv.evaluate "$run" --device "$device" "${score[@]}" 2>&1 | tail -n 12 || status=1
    else
        echo "gpu.sh: the $amp run stopped; the end of its log:" && tail -n 5 "$out/latent_ebm_$amp.log"
        status=1
    fi
done
exit $status
