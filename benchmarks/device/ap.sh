# Adversarial-poison prototype variants on one GPU (in memory; see benchmarks/exploration/adversarial_poison_v2.py).
source benchmarks/device/setup.sh
export OMP_NUM_THREADS=4
R=/tmp/res; mkdir -p $R
( timeout 500 python3 benchmarks/exploration/adversarial_poison_v2.py --size 64 --ratio 0.16 --steps 100 --out $R/ap_flip.json > $R/ap_flip.log 2>&1 ) & P1=$!
( timeout 500 python3 benchmarks/exploration/adversarial_poison_v2.py --size 64 --ratio 0.16 --steps 100 --surrogates resnet18 densenet121 plain_cnn --out $R/ap_flip3.json > $R/ap_flip3.log 2>&1 ) & P2=$!
( timeout 500 python3 benchmarks/exploration/adversarial_poison_v2.py --size 64 --ratio 0.16 --steps 100 --target blank --out $R/ap_blank.json > $R/ap_blank.log 2>&1 ) & P3=$!
wait $P1 $P2 $P3
tar czf $OUT/ap.tgz -C /tmp res
tail -n 14 $R/*.log
