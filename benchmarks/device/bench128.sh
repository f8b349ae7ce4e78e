# The whole Br35H 128 px release benchmark on one GPU, split over two processes that share the GPU: A releases
# (exactly `medue run`) and trains the three attackers; B waits for that release and trains the countermeasure rows.
source benchmarks/device/setup.sh
export OMP_NUM_THREADS=8
R=/tmp/res; mkdir -p $R; W=/tmp/w128; EP=${EPOCHS:-15}
N=release_efficacy_br35h_128_nifti_salm_h100
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 1000 > $R/gpu_util.csv & MON=$!
T0=$(date +%s)
( timeout 560 medue evaluate pipelines/br35h.yaml --dataset benchmarks/data/br35h_128_nifti --epochs $EP --device cuda \
    --seeds 0 1 --countermeasures none --work $W --out $R/${N}_attackers > $R/A.log 2>&1 ) & PA=$!
until grep -q "read back" $R/A.log 2>/dev/null || ! kill -0 $PA 2>/dev/null; do sleep 2; done
( timeout 500 medue evaluate pipelines/br35h.yaml --dataset benchmarks/data/br35h_128_nifti --epochs $EP --device cuda \
    --seeds 0 1 --existing --work $W --attackers resnet18:flip_crop \
    --countermeasures jpeg_q10 bit_depth_3 median_3x3 adversarial_training --out $R/${N}_countermeasures > $R/B.log 2>&1 ) & PB=$!
wait $PA $PB
echo "wall seconds, release + both: $(( $(date +%s) - T0 ))" | tee $R/wall.txt
kill $MON
tar czf $OUT/res128.tgz -C /tmp res
tail -n 30 $R/A.log; tail -n 25 $R/B.log
