cd <checkout>
export PYTHONPATH=<checkout> OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
time nice -n 5 python -m medue.cli evaluate pipelines/br35h.yaml --dataset benchmarks/data/br35h_64_nifti \
   --existing --work <runs>/release_efficacy_br35h_64_nifti_salm_suite_full_release \
   --suite full --attacks resnet18_monai_tutorial resnet18_half_resolution resnet18_mix10 resnet18_mix25 \
      densenet121_flip_crop resnet18_jpeg_q10 resnet18_bit_depth_3 resnet18_median_3x3 resnet18_gaussian_blur \
      resnet18_adversarial_training resnet18_double_resolution resnet18_sgd_cosine_30 \
   --seeds 0 1 --headline-seeds 0 1 --epochs 8 --device cpu \
   --out <runs>/release_efficacy_br35h_64_nifti_salm_suite_part2 --name br35h_64_nifti_salm_suite_part2
