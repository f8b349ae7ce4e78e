# GPU session 1 (nvidia-h100-x1): CT benchmark, 64 px default release benchmark on GPU, adversarial-poison prototype.
source benchmarks/device/setup.sh
export OMP_NUM_THREADS=4
R=/tmp/res; mkdir -p $R
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > $R/gpu_util.csv &
MON=$!
( timeout 200 python3 -m pytest -q -m gpu tests -p no:cacheprovider > $R/pytest_gpu.log 2>&1 ) & P1=$!
( for s in 300 64; do timeout 240 python3 benchmarks/ct_volume.py --slices $s --device cuda --out $R/ct_volume_h100_$s; done > $R/ct.log 2>&1 ) & P2=$!
( timeout 530 python3 benchmarks/exploration/adversarial_poison_v2.py --size 64 --ratio 0.16 --steps 100 --out $R/ap_flip.json > $R/ap_flip.log 2>&1 ) & P3=$!
( timeout 530 medue evaluate pipelines/br35h.yaml --dataset benchmarks/data/br35h_64_nifti --epochs 10 --device cuda --seeds 0 1 --out $R/release_efficacy_br35h_64_nifti_salm_h100 > $R/eval64.log 2>&1 ) & P4=$!
wait $P1 $P2 $P3 $P4
kill $MON
tar czf $OUT/res.tgz -C /tmp res
tail -n 4 $R/*.log
