# Source on a GPU machine without registry access: installs the wheels carried in .whl/ (monai, pydicom, nibabel,
# jsonschema stack; torch, scikit-image, matplotlib, pyyaml come with the machine) and puts `medue` on PATH.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MEDUE_KEY=device-benchmark-key
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -c "import sys; from medue.cli import main; sys.exit(main())" "$@"\n' > /tmp/bin/medue
chmod +x /tmp/bin/medue
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
