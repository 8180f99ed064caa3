"""Convert a tfds dataset stored as TFRecord (tfds' default) into ArrayRecord, the random-access format grain reads.

    python -m vlmjax.data.to_array_record --dataset_dir ~/tensorflow_datasets/my_dataset/1.0.0

Writes each shard `<name>-<split>.tfrecord-XXXXX-of-YYYYY` as `<name>-<split>.array_record-XXXXX-of-YYYYY` in the
same folder (the same serialized records in the same order, written as tfds writes ArrayRecord) and sets
`dataset_info.json`'s file format to `array_record`; the TFRecord shards stay unless `--delete_tfrecord`. What
`tfds convert_format` does, without its Apache Beam dependency, and without TensorFlow: TFRecord framing is read
here (length, CRC, payload, CRC), and each length and record is checked against its masked CRC-32C.
"""
import argparse
import glob
import json
import os
import struct
import sys


def _crc_table() -> list:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _crc_table()


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli): `google_crc32c` when installed, else a table-driven loop (~10 MB/s)."""
    try:
        import google_crc32c

        return google_crc32c.value(data)
    except ImportError:
        crc, table = 0xFFFFFFFF, _TABLE
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecord(path: str):
    """Yields the records of a TFRecord file; ValueError naming the file on a truncated or corrupt record."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header")
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if _masked_crc(header[:8]) != length_crc:
                raise ValueError(f"{path}: corrupt record length (CRC mismatch)")
            data, footer = f.read(length), f.read(4)
            if len(data) < length or len(footer) < 4:
                raise ValueError(f"{path}: truncated record")
            if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise ValueError(f"{path}: corrupt record (CRC mismatch)")
            yield data


def convert(dataset_dir: str, delete_tfrecord: bool = False) -> list:
    """Converts every TFRecord shard of the tfds dataset version folder `dataset_dir`; returns the files written."""
    from array_record.python.array_record_module import ArrayRecordWriter

    info_path = os.path.join(dataset_dir, "dataset_info.json")
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f"--dataset_dir {dataset_dir!r}: no dataset_info.json; expected a tfds dataset "
                                f"version folder such as ~/tensorflow_datasets/<name>/<version>")
    with open(info_path) as f:
        info = json.load(f)
    shards = sorted(glob.glob(os.path.join(dataset_dir, "*.tfrecord-*-of-*")))
    if not shards:
        raise FileNotFoundError(f"--dataset_dir {dataset_dir!r}: no *.tfrecord-*-of-* shards (file format "
                                f"{info.get('fileFormat', 'tfrecord')!r})")
    written = []
    for shard in shards:
        out = shard.replace(".tfrecord-", ".array_record-")
        writer = ArrayRecordWriter(out + ".tmp", "group_size:1")  # tfds' own ArrayRecord options
        for record in read_tfrecord(shard):
            writer.write(record)
        writer.close()
        os.replace(out + ".tmp", out)
        written.append(out)
    info["fileFormat"] = "array_record"
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(info_path + ".tmp", info_path)
    if delete_tfrecord:
        for shard in shards:
            os.remove(shard)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description="Convert a tfds TFRecord dataset to ArrayRecord (what grain reads).")
    p.add_argument("--dataset_dir", required=True, help="tfds version folder: <data_dir>/<name>[/<config>]/<version>")
    p.add_argument("--delete_tfrecord", action="store_true", help="Remove the TFRecord shards afterwards.")
    args = p.parse_args(argv)
    try:
        written = convert(os.path.expanduser(args.dataset_dir), args.delete_tfrecord)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {len(written)} ArrayRecord shards in {args.dataset_dir}")


if __name__ == "__main__":
    main()
