"""Stored member files (BP5): one reader, the checks against the config, the offline dataset, and
the held-out and test sets read from them."""

from datamove.data.files import DatasetError, StoredMember, check_member_file, load_members, member_file, open_checked

__all__ = ["DatasetError", "StoredMember", "check_member_file", "load_members", "member_file", "open_checked"]
