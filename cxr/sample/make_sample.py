"""Make the bundled sample `chest-xray-sample.zip` from the shared 224-px copy of the Kaggle dataset.

    python cxr/sample/make_sample.py [../shared/data/chest-xray-pneumonia-224.zip]

Deterministic: whole patients, chosen in the order of sha1("sample:" + patient id), until each part is full:
train 40 NORMAL, 20 bacterial + 20 viral PNEUMONIA; test 12 NORMAL, 6 bacterial + 6 viral PNEUMONIA. A patient
id already used in one split is not used in the other. Same layout as the Kaggle archive
(chest_xray/{train,test}/{NORMAL,PNEUMONIA}/), same file names, fixed zip timestamps (byte-identical output).
"""
from __future__ import annotations

import hashlib
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1].parent / "shared" / "data" / "chest-xray-pneumonia-224.zip"
OUT = HERE / "chest-xray-sample.zip"
TARGETS = {  # (split, label, subtype) -> images
    ("train", "NORMAL", "normal"): 40,
    ("train", "PNEUMONIA", "bacteria"): 20,
    ("train", "PNEUMONIA", "virus"): 20,
    ("test", "NORMAL", "normal"): 12,
    ("test", "PNEUMONIA", "bacteria"): 6,
    ("test", "PNEUMONIA", "virus"): 6,
}


def choose(names: list[str]) -> list[str]:
    """The member names of the sample (see the module docstring)."""
    sys.path.insert(0, str(HERE.parents[1]))
    from cxr.data import patient_id, subtype_of

    by_patient: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for name in names:
        parts = name.split("/")
        if len(parts) != 4 or parts[1] not in ("train", "test") or not parts[3].lower().endswith((".jpeg", ".jpg")):
            continue
        by_patient[(parts[1], parts[2], patient_id(parts[3], parts[2]))].append(name)
    chosen, used = [], set()
    for split in ("train", "test"):
        for (t_split, label, subtype), target in TARGETS.items():
            if t_split != split:
                continue
            keys = [k for k in by_patient if k[0] == split and k[1] == label and k[2] not in used]
            keys.sort(key=lambda k: hashlib.sha1(f"sample:{k[2]}".encode()).hexdigest())
            total = 0
            for key in keys:
                files = by_patient[key]
                if {subtype_of(Path(f).name, label) for f in files} != {subtype} or total + len(files) > target:
                    continue
                chosen.extend(sorted(files))
                used.add(key[2])
                total += len(files)
                if total == target:
                    break
            if total != target:
                raise RuntimeError(f"could only find {total} of {target} images for {split}/{label}/{subtype}")
    return sorted(chosen)


def main(source: Path = SOURCE, out: Path = OUT) -> Path:
    with zipfile.ZipFile(source) as zf:
        members = choose(zf.namelist())
        tmp = out.with_name(out.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zout:
            for name in members:
                info = zipfile.ZipInfo(name, date_time=(2018, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zout.writestr(info, zf.read(name))
    tmp.replace(out)
    print(f"wrote {out} ({len(members)} images, {out.stat().st_size / 1024:.0f} KiB)")
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
