cd <checkout>
export PYTHONPATH=<checkout> OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONUNBUFFERED=1
python -c "import medue,sys; print(medue.__file__)"
time nice -n 5 python -m medue.cli evaluate pipelines/br35h.yaml --dataset benchmarks/data/br35h_64_nifti \
   --suite full --seeds 0 1 --headline-seeds 0 1 2 3 --epochs 12 --device cpu \
   --out <runs>/release_efficacy_br35h_64_nifti_salm_suite_full --name br35h_64_nifti_salm_suite_full
