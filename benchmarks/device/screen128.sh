# 128 px screen of SALM variants on one GPU: releases in parallel (benchmarks/configs/NAME.yaml for each NAME given),
# ResNet-18 and DenseNet on each, clean rows reused from the default's 128 px result.
#   bash benchmarks/device/screen128.sh screen_dual_f15 screen_dual_f20
source benchmarks/device/setup.sh
export OMP_NUM_THREADS=5
R=/tmp/res; mkdir -p $R; P=""
for v in "$@"; do
  ( timeout 500 medue evaluate benchmarks/configs/$v.yaml --dataset benchmarks/data/br35h_128_nifti --epochs 15 \
      --device cuda --seeds 0 1 --countermeasures none --attackers resnet18:flip_crop densenet121:flip_crop \
      --clean-from benchmarks/results/release_efficacy_br35h_128_nifti_salm_h100_attackers.json \
      --work /tmp/w_$v --out $R/${v}_128 > $R/${v}_128.log 2>&1 ) & P="$P $!"
done
wait $P
tar czf $OUT/screen128.tgz --exclude='*_release' -C /tmp res
for v in "$@"; do echo "== $v"; grep -A4 "^| attacker | augmentation" $R/${v}_128.md; grep "Fidelity" $R/${v}_128.md; done
