"""The throwaway real etcd 3.4 member the tests use (lives in coderz_backup.sandbox, shared with the demo)."""

from coderz_backup.sandbox import ROOT_PW, EtcdServer, _b64  # noqa: F401

__all__ = ["ROOT_PW", "EtcdServer", "_b64"]
