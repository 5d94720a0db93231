#!/usr/bin/env bash
# Issue 26: train (or finish) the all-source EfficientNet-Lite0 candidate, convert it to int8 and
# judge it, beside the shipped models, by the ship rule (benchmarks/ship_rule.py).
#
#   scripts/train-all-sources.sh            # from the repository root; safe to run again
#
# Every step is skipped when its output is there, so a stopped run continues where it stopped:
# the manifest is rebuilt from the recipe (deterministic, seed 0) if absent; a run folder with a
# config.json and no model.keras is resumed (`dermedge train --resume`); a checkpoint committed
# under checkpoints/<run>/ (by a session that ran out of time) is restored first.
# Time here (2 shared CPU cores): 48 min for the first run, ~35 min for the second, ~6 min per
# int8 conversion, ~5 min for the ship rule.
set -euo pipefail
export DERMEDGE_DATA="${DERMEDGE_DATA:-$(cd .. && pwd)/shared/data}"
NAME="${NAME:-all-sources-lite0}"
RUN="runs/train/$NAME"
mkdir -p runs/logs
LOG="runs/logs/$NAME.log"

if [ ! -f runs/data/all-sources/manifest.csv ]; then
    dermedge data split --recipe dermedge/data/recipes/all-sources.toml --out runs/data/all-sources
fi

for run in "$NAME" "$NAME-ft"; do
    saved="checkpoints/$run"
    if [ ! -f "runs/train/$run/config.json" ] && [ -f "$saved/config.json" ]; then
        echo "restoring the committed checkpoint $saved -> runs/train/$run"
        mkdir -p "runs/train/$run/checkpoints"
        cp "$saved"/*.json "$saved"/manifest.csv "runs/train/$run"/
        cp "$saved"/checkpoints/* "runs/train/$run/checkpoints/"
        [ -f "$saved/model.keras" ] && cp "$saved/model.keras" "runs/train/$run/"
    fi
done

if [ -f "$RUN/model.keras" ]; then
    echo "$RUN is finished"
elif [ -f "$RUN/config.json" ]; then
    nice -n 5 dermedge train --data runs/data/all-sources --name "$NAME" --resume --quiet >>"$LOG" 2>&1
else
    # the recipe (issue 26's, plus lesion scale): Lite0 224 px, field + lesion-scale augmentation,
    # classes balanced per (sub-)source, 2 frozen epochs then 4 fine-tuning the top 10 blocks at 2e-4
    nice -n 5 dermedge train --data runs/data/all-sources --arch efficientnet_lite0 --img-size 224 \
        --augment field-scale --balance source --epochs 2 --fine-tune-epochs 4 \
        --unfreeze-blocks 10 --fine-tune-lr 2e-4 --name "$NAME" --quiet >>"$LOG" 2>&1
fi

# then 4 more epochs with the whole backbone (16 blocks) trainable, from its weights: short runs
# rank well as shipped but adapt worse; a longer-trained backbone adapts better (issue 26)
FT="$NAME-ft"
if [ ! -f "runs/train/$FT/model.keras" ]; then
    if [ -f "runs/train/$FT/config.json" ]; then
        nice -n 5 dermedge train --data runs/data/all-sources --name "$FT" --resume --quiet >>"$LOG" 2>&1
    else
        nice -n 5 dermedge train --data runs/data/all-sources --arch efficientnet_lite0 \
            --weights "$RUN/model.keras" --epochs 0 --fine-tune-epochs 4 --unfreeze-blocks 16 \
            --fine-tune-lr 1e-4 --augment field-scale --balance source --name "$FT" --quiet >>"$LOG" 2>&1
    fi
fi

for run in "$NAME" "$FT"; do
    if [ ! -f "runs/convert/$run/model_int8.tflite" ]; then
        nice -n 5 dermedge convert "runs/train/$run" --quant int8 --calib-images 600 >>"$LOG" 2>&1
    fi
done

# the old models' training manifests (rebuilt: same commands as the README's Reproduce)
if [ ! -f runs/data/isic-ham/manifest.csv ]; then
    dermedge data split "$DERMEDGE_DATA/isic-mvb" --link "$DERMEDGE_DATA/ham10000-thumbs" --out runs/data/isic-mvb
    dermedge data split "$DERMEDGE_DATA/ham10000-thumbs" --extend runs/data/isic-mvb --out runs/data/isic-ham
fi
nice -n 5 python benchmarks/ship_rule.py \
    --model default=dermedge/models/default.tflite --model tiny=dermedge/models/tiny.tflite \
    --model "$NAME=runs/convert/$NAME/model_int8.tflite" \
    --model "$FT=runs/convert/$FT/model_int8.tflite" \
    --manifest runs/data/all-sources \
    --train-manifest default=runs/data/isic-ham --train-manifest tiny=runs/data/isic-mvb \
    --train-manifest "$NAME=$RUN/manifest.csv" --train-manifest "$FT=runs/train/$FT/manifest.csv" \
    --out benchmarks/results/ship_rule_all-sources
