"""Containers in S3, read through fsspec/s3fs from moto's S3 server on 127.0.0.1 (started and
stopped here): both forms, several processes at once, missing and damaged objects, refused
credentials, an unreachable endpoint, and uploads (complete, refused, interrupted).

Nothing here can reach AWS: every AWS_* variable is replaced for the module, the endpoint is
the local server (in storage_options and in AWS_ENDPOINT_URL), and the credentials are fake.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

import ladd_format
from ladd_format.remote import CredentialsRefusedError, RemoteStoreError, upload
from ladd_format.testing import write_example

s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

REGION = "us-east-1"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, a bucket, and one container of each form in it."""
    tmp = tmp_path_factory.mktemp("s3")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                mp.delenv(name)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", REGION)
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_CONFIG_FILE", str(tmp / "no-config"))
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-credentials"))
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
            bucket = f"ladd-{uuid.uuid4().hex[:12]}"
            client.create_bucket(Bucket=bucket)
            local = write_example(tmp / "c.ladd", num_classes=3, ipc=4, size=16)
            packed = ladd_format.pack(local, tmp / "c.ladd.zip")
            put_tree(client, bucket, "data/c.ladd", local)
            client.upload_file(str(packed), bucket, "data/c.ladd.zip")
            yield SimpleNamespace(
                endpoint=endpoint, bucket=bucket, client=client, tmp=tmp, local=local, packed=packed,
                options={"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                         "client_kwargs": {"region_name": REGION}},
                urls={"dir": f"s3://{bucket}/data/c.ladd", "zip": f"s3://{bucket}/data/c.ladd.zip"})
        finally:
            server.stop()


def put_tree(client, bucket, prefix, root):
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


def keys(client, bucket, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"].removeprefix(prefix + "/") for page in pages for o in page.get("Contents", []))


def flip_byte(client, bucket, key, at):
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[at] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def copy_prefix(s3, source, target):
    for key in keys(s3.client, s3.bucket, source):
        s3.client.copy_object(Bucket=s3.bucket, Key=f"{target}/{key}",
                              CopySource={"Bucket": s3.bucket, "Key": f"{source}/{key}"})


def assert_same(ds, local):
    with ladd_format.open(local) as ref:
        assert ds.manifest == ref.manifest
        for name in ("images", "labels", "dense_labels"):
            assert np.array_equal(np.asarray(getattr(ds, name)), np.asarray(getattr(ref, name))), name


@pytest.mark.parametrize("form", ["dir", "zip"])
def test_open_equals_local(s3, form):
    with ladd_format.open(s3.urls[form], storage_options=s3.options, verify=True) as ds:
        assert_same(ds, s3.local)
        with ladd_format.open(s3.local) as ref:
            assert ds.stored_bytes() == ref.stored_bytes()


def test_credentials_and_endpoint_from_environment(s3):
    """No storage_options: s3fs takes AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL."""
    with ladd_format.open(s3.urls["zip"]) as ds:
        assert_same(ds, s3.local)


RANK = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    import ladd_format
    rank, world, urls = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    out = {}
    for url in urls:
        with ladd_format.open(url, verify=True) as ds:
            rows = list(range(rank, ds.manifest.num_images, world))
            out[url] = {"rows": rows, "images": hashlib.sha256(np.asarray(ds.images)[rank::world].tobytes())
                        .hexdigest(), "dense": hashlib.sha256(np.asarray(ds.dense_labels).tobytes()).hexdigest(),
                        "manifest": ds.manifest.manifest_sha256}
    print(json.dumps(out))
""")


def test_ranks_read_the_same_container(s3):
    """Two processes (as two ranks of a job) open both forms at once, each verifying every
    digest, and read their share of the images."""
    world, urls = 2, [s3.urls["dir"], s3.urls["zip"]]
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(rank), str(world), *urls], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for rank in range(world)]
    results = []
    try:
        for proc in ranks:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for proc in ranks:
            proc.kill()
    with ladd_format.open(s3.local) as ref:
        images, dense = np.asarray(ref.images), np.asarray(ref.dense_labels)
        for rank, result in enumerate(results):
            for url in urls:
                got = result[url]
                assert got["rows"] == list(range(rank, ref.manifest.num_images, world))
                assert got["images"] == hashlib.sha256(images[rank::world].tobytes()).hexdigest()
                assert got["dense"] == hashlib.sha256(dense.tobytes()).hexdigest()
                assert got["manifest"] == ref.manifest.manifest_sha256


def test_missing_container_bucket_and_object(s3):
    for url in (f"s3://{s3.bucket}/data/none.ladd", f"s3://{s3.bucket}/data/none.ladd.zip",
                "s3://ladd-no-such-bucket/c.ladd"):
        with pytest.raises(ladd_format.ContainerNotFoundError, match="no such container"):
            ladd_format.open(url, storage_options=s3.options)


def test_missing_chunk_is_incomplete(s3):
    copy_prefix(s3, "data/c.ladd", "missing/c.ladd")
    chunk = next(k for k in keys(s3.client, s3.bucket, "missing/c.ladd") if k.startswith("images/c/"))
    s3.client.delete_object(Bucket=s3.bucket, Key=f"missing/c.ladd/{chunk}")
    with pytest.raises(ladd_format.IncompleteContainerError):
        ladd_format.open(f"s3://{s3.bucket}/missing/c.ladd", storage_options=s3.options, verify=False)
    s3.client.delete_object(Bucket=s3.bucket, Key="missing/c.ladd/zarr.json")
    with pytest.raises(ladd_format.IncompleteContainerError, match="zarr.json"):
        ladd_format.open(f"s3://{s3.bucket}/missing/c.ladd", storage_options=s3.options, verify=False)


def test_chunk_deleted_after_open(s3):
    copy_prefix(s3, "data/c.ladd", "later/c.ladd")
    with ladd_format.open(f"s3://{s3.bucket}/later/c.ladd", storage_options=s3.options, verify=False) as ds:
        chunk = next(k for k in keys(s3.client, s3.bucket, "later/c.ladd") if k.startswith("images/c/"))
        s3.client.delete_object(Bucket=s3.bucket, Key=f"later/c.ladd/{chunk}")
        with pytest.raises(ladd_format.IncompleteContainerError, match="missing"):
            np.asarray(ds.images)


def test_damaged_objects(s3):
    copy_prefix(s3, "data/c.ladd", "damaged/c.ladd")
    chunk = next(k for k in keys(s3.client, s3.bucket, "damaged/c.ladd") if k.startswith("images/c/"))
    flip_byte(s3.client, s3.bucket, f"damaged/c.ladd/{chunk}", 40)
    with pytest.raises(ladd_format.IntegrityError):
        ladd_format.open(f"s3://{s3.bucket}/damaged/c.ladd", storage_options=s3.options, verify=True)

    data = s3.packed.read_bytes()
    at = data.index(b"images/c/0/0/0/0") + 100  # inside that chunk's data
    for name, body in [("flipped", data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]),
                       ("truncated", data[:-30]), ("headerless", data[:4] + b"\0" * 26 + data[30:])]:
        s3.client.put_object(Bucket=s3.bucket, Key=f"damaged/{name}.ladd.zip", Body=body)
        with pytest.raises(ladd_format.IntegrityError):
            with ladd_format.open(f"s3://{s3.bucket}/damaged/{name}.ladd.zip", storage_options=s3.options) as ds:
                np.asarray(ds.images)

    s3.client.put_object(Bucket=s3.bucket, Key="damaged/text.ladd", Body=b"not a container")
    with pytest.raises(ladd_format.ContainerNotFoundError, match="not a zip"):
        ladd_format.open(f"s3://{s3.bucket}/damaged/text.ladd", storage_options=s3.options)


def test_wrong_credentials(s3):
    """With moto's authentication on: an unknown key, a wrong secret and no credentials at all
    are one-line CredentialsRefusedErrors naming the URL; the right key reads."""
    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name=REGION)
    iam.create_user(UserName="reader")
    good = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    base = {"endpoint_url": s3.endpoint, "client_kwargs": {"region_name": REGION}}
    set_auth(s3.endpoint, 0)
    try:
        for form in ("dir", "zip"):
            for key, secret in (("AKIAUNKNOWNKEY000000", "whatever"), (good["AccessKeyId"], "wrong-secret")):
                with pytest.raises(CredentialsRefusedError, match="refused the credentials") as info:
                    ladd_format.open(s3.urls[form], storage_options={**base, "key": key, "secret": secret})
                message = str(info.value)
                assert s3.urls[form] in message and s3.endpoint in message and "\n" not in message
                assert isinstance(info.value, ladd_format.LaddError) and isinstance(info.value, PermissionError)
            with ladd_format.open(s3.urls[form], storage_options={
                    **base, "key": good["AccessKeyId"], "secret": good["SecretAccessKey"]}) as ds:
                assert_same(ds, s3.local)
    finally:
        set_auth(s3.endpoint, float("inf"))


def test_no_credentials(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CredentialsRefusedError, match="no usable credentials"):
        ladd_format.open(s3.urls["dir"], storage_options={"endpoint_url": s3.endpoint})


def set_auth(endpoint, free_requests):
    """moto's switch: after this many more requests, every request must carry IAM credentials."""
    body = str(free_requests).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=body,
                                                       headers={"Content-Type": "text/plain"}), timeout=10):
        pass


def test_unreachable_endpoint(s3):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    options = {"endpoint_url": closed, "key": "testing", "secret": "testing",
               "config_kwargs": {"connect_timeout": 2, "retries": {"max_attempts": 1}}}
    start = time.monotonic()
    with pytest.raises(RemoteStoreError, match="failed") as info:
        ladd_format.open(s3.urls["dir"], storage_options=options)
    assert closed in str(info.value) and s3.urls["dir"] in str(info.value)
    assert not isinstance(info.value, CredentialsRefusedError)
    assert time.monotonic() - start < 15


def test_bad_storage_options(s3, tmp_path):
    with pytest.raises(ladd_format.InvalidInputError, match="URLs"):
        ladd_format.open(s3.local, storage_options={"anon": True})
    with pytest.raises(ladd_format.InvalidInputError):
        ladd_format.open(s3.urls["dir"], storage_options="anon")


def test_upload_round_trip(s3):
    url, zurl = f"s3://{s3.bucket}/up/c.ladd", f"s3://{s3.bucket}/up/c.ladd.zip"
    assert upload(s3.local, url, storage_options=s3.options) == url
    assert upload(s3.packed, zurl, storage_options=s3.options) == zurl
    for target in (url, zurl):
        with ladd_format.open(target, storage_options=s3.options) as ds:
            assert_same(ds, s3.local)
    with pytest.raises(ladd_format.ContainerExistsError):
        upload(s3.local, url, storage_options=s3.options)
    with pytest.raises(ladd_format.InvalidInputError, match=".zip"):
        upload(s3.packed, f"s3://{s3.bucket}/up/other.ladd", storage_options=s3.options)

    other = write_example(s3.tmp / "other.ladd", seed=1, num_classes=2, ipc=1, size=8)
    s3.client.put_object(Bucket=s3.bucket, Key="up/c.ladd/images/c/9/0/0/0", Body=b"stale")  # not in `other`
    upload(other, url, storage_options=s3.options, overwrite=True)
    upload(ladd_format.pack(other, s3.tmp / "other.ladd.zip"), zurl, storage_options=s3.options, overwrite=True)
    for target in (url, zurl):
        with ladd_format.open(target, storage_options=s3.options) as ds:
            assert_same(ds, other)
    local_keys = sorted(p.relative_to(other).as_posix() for p in other.rglob("*") if p.is_file())
    assert keys(s3.client, s3.bucket, "up/c.ladd") == local_keys  # the stale object is gone


def test_upload_refuses_damaged_local(s3, tmp_path):
    local = write_example(tmp_path / "c.ladd", num_classes=2, ipc=1, size=8)
    chunk = next(p for p in (local / "images" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(ladd_format.IntegrityError):
        upload(local, f"s3://{s3.bucket}/refused/c.ladd", storage_options=s3.options)
    assert keys(s3.client, s3.bucket, "refused/c.ladd") == []


def test_interrupted_upload_is_never_a_container(s3, monkeypatch):
    """The connection drops on the last PUT (the root zarr.json, which holds the manifest): a
    reader sees an incomplete container, both for a new upload and for an overwrite; rerun, it
    is complete."""
    prefix = "cut/c.ladd"
    url, root = f"s3://{s3.bucket}/{prefix}", f"{s3.bucket}/{prefix}/zarr.json"
    put_file = s3fs.S3FileSystem._put_file

    async def cut_before_root(self, lpath, rpath, *args, **kwargs):
        if rpath.removeprefix("s3://") == root:
            raise ConnectionResetError("connection reset by peer")
        return await put_file(self, lpath, rpath, *args, **kwargs)

    other = write_example(s3.tmp / "cut.ladd", seed=2, num_classes=2, ipc=1, size=8)
    with monkeypatch.context() as mp:
        mp.setattr(s3fs.S3FileSystem, "_put_file", cut_before_root)
        with pytest.raises(RemoteStoreError, match="connection reset"):
            upload(s3.local, url, storage_options=s3.options)
    assert "images/zarr.json" in keys(s3.client, s3.bucket, prefix)
    with pytest.raises(ladd_format.IncompleteContainerError, match="zarr.json"):
        ladd_format.open(url, storage_options=s3.options)

    upload(s3.local, url, storage_options=s3.options, overwrite=True)  # rerun: complete
    with ladd_format.open(url, storage_options=s3.options) as ds:
        assert_same(ds, s3.local)

    with monkeypatch.context() as mp:  # replacing it, cut off the same way
        mp.setattr(s3fs.S3FileSystem, "_put_file", cut_before_root)
        with pytest.raises(RemoteStoreError):
            upload(other, url, storage_options=s3.options, overwrite=True)
    with pytest.raises(ladd_format.IncompleteContainerError, match="zarr.json"):
        ladd_format.open(url, storage_options=s3.options)
