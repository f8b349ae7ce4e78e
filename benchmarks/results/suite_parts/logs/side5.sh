cd <checkout>
export PYTHONPATH=<checkout> OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
time nice -n 5 python -m medue.cli evaluate pipelines/br35h.yaml --dataset benchmarks/data/br35h_64_nifti \
   --existing --work <runs>/release_efficacy_br35h_64_nifti_salm_suite_full_release \
   --suite full --attacks resnet18_jpeg_q10 resnet18_median_3x3 --seeds 0 1 --headline-seeds 0 1 --epochs 12 \
   --device cpu --out <runs>/release_efficacy_br35h_64_nifti_salm_suite_part5_12epochs \
   --name br35h_64_nifti_salm_suite_part5_12epochs
