"""raftlib: an embeddable, sans-I/O implementation of the Raft consensus protocol."""

from raftlib.config import Config, ReadOnlyOption
from raftlib.errors import (
    CompactedError,
    ConfigError,
    DecodeError,
    ProposalDropped,
    RaftError,
    RaftInvariantError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailable,
    StepLocalMessageError,
    StepPeerNotFoundError,
    StorageError,
    UnavailableError,
)
from raftlib.rawnode import Peer, RawNode, Ready
from raftlib.status import ProgressState, ProgressStatus, Status
from raftlib.storage import MemoryStorage, Storage
from raftlib.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
)

__version__ = "0.1.0"
