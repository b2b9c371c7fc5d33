import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VmState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VM_STATE_UNSPECIFIED: _ClassVar[VmState]
    VM_STATE_CREATED: _ClassVar[VmState]
    VM_STATE_STARTING: _ClassVar[VmState]
    VM_STATE_RUNNING: _ClassVar[VmState]
    VM_STATE_PAUSED: _ClassVar[VmState]
    VM_STATE_STOPPING: _ClassVar[VmState]
    VM_STATE_STOPPED: _ClassVar[VmState]
    VM_STATE_FAILED: _ClassVar[VmState]

class SnapshotType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SNAPSHOT_TYPE_UNSPECIFIED: _ClassVar[SnapshotType]
    SNAPSHOT_TYPE_FULL: _ClassVar[SnapshotType]
    SNAPSHOT_TYPE_DIFF: _ClassVar[SnapshotType]
VM_STATE_UNSPECIFIED: VmState
VM_STATE_CREATED: VmState
VM_STATE_STARTING: VmState
VM_STATE_RUNNING: VmState
VM_STATE_PAUSED: VmState
VM_STATE_STOPPING: VmState
VM_STATE_STOPPED: VmState
VM_STATE_FAILED: VmState
SNAPSHOT_TYPE_UNSPECIFIED: SnapshotType
SNAPSHOT_TYPE_FULL: SnapshotType
SNAPSHOT_TYPE_DIFF: SnapshotType

class VmSpec(_message.Message):
    __slots__ = ("machine", "boot", "drives", "network_interfaces", "vsock", "metadata_service", "entropy")
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    DRIVES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_INTERFACES_FIELD_NUMBER: _ClassVar[int]
    VSOCK_FIELD_NUMBER: _ClassVar[int]
    METADATA_SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    machine: MachineConfig
    boot: BootSource
    drives: _containers.RepeatedCompositeFieldContainer[Drive]
    network_interfaces: _containers.RepeatedCompositeFieldContainer[NetworkInterface]
    vsock: Vsock
    metadata_service: MetadataServiceConfig
    entropy: Entropy
    def __init__(self, machine: _Optional[_Union[MachineConfig, _Mapping]] = ..., boot: _Optional[_Union[BootSource, _Mapping]] = ..., drives: _Optional[_Iterable[_Union[Drive, _Mapping]]] = ..., network_interfaces: _Optional[_Iterable[_Union[NetworkInterface, _Mapping]]] = ..., vsock: _Optional[_Union[Vsock, _Mapping]] = ..., metadata_service: _Optional[_Union[MetadataServiceConfig, _Mapping]] = ..., entropy: _Optional[_Union[Entropy, _Mapping]] = ...) -> None: ...

class MachineConfig(_message.Message):
    __slots__ = ("vcpus", "memory_mib", "smt")
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    SMT_FIELD_NUMBER: _ClassVar[int]
    vcpus: int
    memory_mib: int
    smt: bool
    def __init__(self, vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., smt: _Optional[bool] = ...) -> None: ...

class BootSource(_message.Message):
    __slots__ = ("kernel_path", "initrd_path", "boot_args")
    KERNEL_PATH_FIELD_NUMBER: _ClassVar[int]
    INITRD_PATH_FIELD_NUMBER: _ClassVar[int]
    BOOT_ARGS_FIELD_NUMBER: _ClassVar[int]
    kernel_path: str
    initrd_path: str
    boot_args: str
    def __init__(self, kernel_path: _Optional[str] = ..., initrd_path: _Optional[str] = ..., boot_args: _Optional[str] = ...) -> None: ...

class RateLimiter(_message.Message):
    __slots__ = ("bandwidth", "ops", "kind")
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    bandwidth: TokenBucket
    ops: TokenBucket
    kind: str
    def __init__(self, bandwidth: _Optional[_Union[TokenBucket, _Mapping]] = ..., ops: _Optional[_Union[TokenBucket, _Mapping]] = ..., kind: _Optional[str] = ...) -> None: ...

class TokenBucket(_message.Message):
    __slots__ = ("size", "one_time_burst", "refill_time_ms")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ONE_TIME_BURST_FIELD_NUMBER: _ClassVar[int]
    REFILL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    size: int
    one_time_burst: int
    refill_time_ms: int
    def __init__(self, size: _Optional[int] = ..., one_time_burst: _Optional[int] = ..., refill_time_ms: _Optional[int] = ...) -> None: ...

class Drive(_message.Message):
    __slots__ = ("drive_id", "path_on_host", "is_root_device", "is_read_only", "partuuid", "cache_type", "rate_limiter")
    class CacheType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CACHE_TYPE_UNSPECIFIED: _ClassVar[Drive.CacheType]
        CACHE_TYPE_UNSAFE: _ClassVar[Drive.CacheType]
        CACHE_TYPE_WRITEBACK: _ClassVar[Drive.CacheType]
    CACHE_TYPE_UNSPECIFIED: Drive.CacheType
    CACHE_TYPE_UNSAFE: Drive.CacheType
    CACHE_TYPE_WRITEBACK: Drive.CacheType
    DRIVE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_ON_HOST_FIELD_NUMBER: _ClassVar[int]
    IS_ROOT_DEVICE_FIELD_NUMBER: _ClassVar[int]
    IS_READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    PARTUUID_FIELD_NUMBER: _ClassVar[int]
    CACHE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITER_FIELD_NUMBER: _ClassVar[int]
    drive_id: str
    path_on_host: str
    is_root_device: bool
    is_read_only: bool
    partuuid: str
    cache_type: Drive.CacheType
    rate_limiter: RateLimiter
    def __init__(self, drive_id: _Optional[str] = ..., path_on_host: _Optional[str] = ..., is_root_device: _Optional[bool] = ..., is_read_only: _Optional[bool] = ..., partuuid: _Optional[str] = ..., cache_type: _Optional[_Union[Drive.CacheType, str]] = ..., rate_limiter: _Optional[_Union[RateLimiter, _Mapping]] = ...) -> None: ...

class NetworkInterface(_message.Message):
    __slots__ = ("iface_id", "host_dev_name", "guest_mac", "rx_rate_limiter", "tx_rate_limiter", "netns", "mtu")
    IFACE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_DEV_NAME_FIELD_NUMBER: _ClassVar[int]
    GUEST_MAC_FIELD_NUMBER: _ClassVar[int]
    RX_RATE_LIMITER_FIELD_NUMBER: _ClassVar[int]
    TX_RATE_LIMITER_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    iface_id: str
    host_dev_name: str
    guest_mac: str
    rx_rate_limiter: RateLimiter
    tx_rate_limiter: RateLimiter
    netns: str
    mtu: int
    def __init__(self, iface_id: _Optional[str] = ..., host_dev_name: _Optional[str] = ..., guest_mac: _Optional[str] = ..., rx_rate_limiter: _Optional[_Union[RateLimiter, _Mapping]] = ..., tx_rate_limiter: _Optional[_Union[RateLimiter, _Mapping]] = ..., netns: _Optional[str] = ..., mtu: _Optional[int] = ...) -> None: ...

class Entropy(_message.Message):
    __slots__ = ("rate_limiter",)
    RATE_LIMITER_FIELD_NUMBER: _ClassVar[int]
    rate_limiter: RateLimiter
    def __init__(self, rate_limiter: _Optional[_Union[RateLimiter, _Mapping]] = ...) -> None: ...

class Vsock(_message.Message):
    __slots__ = ("guest_cid", "uds_path")
    GUEST_CID_FIELD_NUMBER: _ClassVar[int]
    UDS_PATH_FIELD_NUMBER: _ClassVar[int]
    guest_cid: int
    uds_path: str
    def __init__(self, guest_cid: _Optional[int] = ..., uds_path: _Optional[str] = ...) -> None: ...

class MetadataServiceConfig(_message.Message):
    __slots__ = ("version", "network_interfaces", "ipv4_address")
    class Version(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VERSION_UNSPECIFIED: _ClassVar[MetadataServiceConfig.Version]
        VERSION_V1: _ClassVar[MetadataServiceConfig.Version]
        VERSION_V2: _ClassVar[MetadataServiceConfig.Version]
    VERSION_UNSPECIFIED: MetadataServiceConfig.Version
    VERSION_V1: MetadataServiceConfig.Version
    VERSION_V2: MetadataServiceConfig.Version
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NETWORK_INTERFACES_FIELD_NUMBER: _ClassVar[int]
    IPV4_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    version: MetadataServiceConfig.Version
    network_interfaces: _containers.RepeatedScalarFieldContainer[str]
    ipv4_address: str
    def __init__(self, version: _Optional[_Union[MetadataServiceConfig.Version, str]] = ..., network_interfaces: _Optional[_Iterable[str]] = ..., ipv4_address: _Optional[str] = ...) -> None: ...

class Vm(_message.Message):
    __slots__ = ("id", "spec", "labels", "state", "reason", "created_at", "state_changed_at", "vmm_pid", "revision", "start_count")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    VMM_PID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    START_COUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: VmSpec
    labels: _containers.ScalarMap[str, str]
    state: VmState
    reason: str
    created_at: _timestamp_pb2.Timestamp
    state_changed_at: _timestamp_pb2.Timestamp
    vmm_pid: int
    revision: int
    start_count: int
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[VmSpec, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[VmState, str]] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., vmm_pid: _Optional[int] = ..., revision: _Optional[int] = ..., start_count: _Optional[int] = ...) -> None: ...

class CreateVmRequest(_message.Message):
    __slots__ = ("vm_id", "spec", "labels", "start")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    spec: VmSpec
    labels: _containers.ScalarMap[str, str]
    start: bool
    def __init__(self, vm_id: _Optional[str] = ..., spec: _Optional[_Union[VmSpec, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., start: _Optional[bool] = ...) -> None: ...

class CreateVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class StartVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class StartVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class StopVmRequest(_message.Message):
    __slots__ = ("vm_id", "grace_period", "force")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    grace_period: _duration_pb2.Duration
    force: bool
    def __init__(self, vm_id: _Optional[str] = ..., grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., force: _Optional[bool] = ...) -> None: ...

class StopVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class PauseVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class PauseVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class ResumeVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class ResumeVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class DeleteVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class DeleteVmResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class GetVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class ListVmsRequest(_message.Message):
    __slots__ = ("label_selector", "states")
    class LabelSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    label_selector: _containers.ScalarMap[str, str]
    states: _containers.RepeatedScalarFieldContainer[VmState]
    def __init__(self, label_selector: _Optional[_Mapping[str, str]] = ..., states: _Optional[_Iterable[_Union[VmState, str]]] = ...) -> None: ...

class ListVmsResponse(_message.Message):
    __slots__ = ("vms", "revision")
    VMS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[Vm]
    revision: int
    def __init__(self, vms: _Optional[_Iterable[_Union[Vm, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class WatchVmsRequest(_message.Message):
    __slots__ = ("since_revision", "label_selector", "vm_id")
    class LabelSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    since_revision: int
    label_selector: _containers.ScalarMap[str, str]
    vm_id: str
    def __init__(self, since_revision: _Optional[int] = ..., label_selector: _Optional[_Mapping[str, str]] = ..., vm_id: _Optional[str] = ...) -> None: ...

class VmEvent(_message.Message):
    __slots__ = ("revision", "type", "vm", "previous_state", "time")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[VmEvent.Type]
        TYPE_CREATED: _ClassVar[VmEvent.Type]
        TYPE_STATE_CHANGED: _ClassVar[VmEvent.Type]
        TYPE_DELETED: _ClassVar[VmEvent.Type]
        TYPE_UPDATED: _ClassVar[VmEvent.Type]
    TYPE_UNSPECIFIED: VmEvent.Type
    TYPE_CREATED: VmEvent.Type
    TYPE_STATE_CHANGED: VmEvent.Type
    TYPE_DELETED: VmEvent.Type
    TYPE_UPDATED: VmEvent.Type
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: VmEvent.Type
    vm: Vm
    previous_state: VmState
    time: _timestamp_pb2.Timestamp
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[_Union[VmEvent.Type, str]] = ..., vm: _Optional[_Union[Vm, _Mapping]] = ..., previous_state: _Optional[_Union[VmState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpdateDriveRequest(_message.Message):
    __slots__ = ("vm_id", "drive_id", "path_on_host")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_ON_HOST_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    drive_id: str
    path_on_host: str
    def __init__(self, vm_id: _Optional[str] = ..., drive_id: _Optional[str] = ..., path_on_host: _Optional[str] = ...) -> None: ...

class UpdateDriveResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class UpdateRateLimiterRequest(_message.Message):
    __slots__ = ("vm_id", "device_id", "rate_limiter")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITER_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    device_id: str
    rate_limiter: RateLimiter
    def __init__(self, vm_id: _Optional[str] = ..., device_id: _Optional[str] = ..., rate_limiter: _Optional[_Union[RateLimiter, _Mapping]] = ...) -> None: ...

class UpdateRateLimiterResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class StreamConsoleRequest(_message.Message):
    __slots__ = ("vm_id", "include_history")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    include_history: bool
    def __init__(self, vm_id: _Optional[str] = ..., include_history: _Optional[bool] = ...) -> None: ...

class ConsoleInput(_message.Message):
    __slots__ = ("vm_id", "include_history", "data")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    include_history: bool
    data: bytes
    def __init__(self, vm_id: _Optional[str] = ..., include_history: _Optional[bool] = ..., data: _Optional[bytes] = ...) -> None: ...

class ConsoleOutput(_message.Message):
    __slots__ = ("data", "dropped_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dropped_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., dropped_bytes: _Optional[int] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("vm_id", "include_history", "logs", "metrics")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    include_history: bool
    logs: bool
    metrics: bool
    def __init__(self, vm_id: _Optional[str] = ..., include_history: _Optional[bool] = ..., logs: _Optional[bool] = ..., metrics: _Optional[bool] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("log", "metrics", "dropped")
    LOG_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    log: LogRecord
    metrics: MetricsRecord
    dropped: int
    def __init__(self, log: _Optional[_Union[LogRecord, _Mapping]] = ..., metrics: _Optional[_Union[MetricsRecord, _Mapping]] = ..., dropped: _Optional[int] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("time", "level", "logger", "message", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LOGGER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    level: str
    logger: str
    message: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., level: _Optional[str] = ..., logger: _Optional[str] = ..., message: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MetricsRecord(_message.Message):
    __slots__ = ("time", "exits", "time_in_kvm_seconds", "console_bytes", "console_dropped_bytes", "log_dropped_lines", "metrics_dropped", "json")
    class ExitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    EXITS_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_KVM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_DROPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOG_DROPPED_LINES_FIELD_NUMBER: _ClassVar[int]
    METRICS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    exits: _containers.ScalarMap[str, int]
    time_in_kvm_seconds: float
    console_bytes: int
    console_dropped_bytes: int
    log_dropped_lines: int
    metrics_dropped: int
    json: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exits: _Optional[_Mapping[str, int]] = ..., time_in_kvm_seconds: _Optional[float] = ..., console_bytes: _Optional[int] = ..., console_dropped_bytes: _Optional[int] = ..., log_dropped_lines: _Optional[int] = ..., metrics_dropped: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...

class PutMetadataRequest(_message.Message):
    __slots__ = ("vm_id", "json")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    json: str
    def __init__(self, vm_id: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class PatchMetadataRequest(_message.Message):
    __slots__ = ("vm_id", "json")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    json: str
    def __init__(self, vm_id: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class GetMetadataRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class MetadataResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("id", "source_vm", "created_at", "state_path", "mem_path", "state_bytes", "memory_bytes", "disk_bytes", "create_seconds", "spec", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VM_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_PATH_FIELD_NUMBER: _ClassVar[int]
    MEM_PATH_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    source_vm: str
    created_at: _timestamp_pb2.Timestamp
    state_path: str
    mem_path: str
    state_bytes: int
    memory_bytes: int
    disk_bytes: int
    create_seconds: float
    spec: VmSpec
    labels: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., source_vm: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_path: _Optional[str] = ..., mem_path: _Optional[str] = ..., state_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., create_seconds: _Optional[float] = ..., spec: _Optional[_Union[VmSpec, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("vm_id", "snapshot_id", "pause", "resume", "snapshot_type")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    snapshot_id: str
    pause: bool
    resume: bool
    snapshot_type: SnapshotType
    def __init__(self, vm_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., pause: _Optional[bool] = ..., resume: _Optional[bool] = ..., snapshot_type: _Optional[_Union[SnapshotType, str]] = ...) -> None: ...

class CreateSnapshotResponse(_message.Message):
    __slots__ = ("snapshot", "vm")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    vm: Vm
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ("source_vm",)
    SOURCE_VM_FIELD_NUMBER: _ClassVar[int]
    source_vm: str
    def __init__(self, source_vm: _Optional[str] = ...) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("snapshot_id",)
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    def __init__(self, snapshot_id: _Optional[str] = ...) -> None: ...

class GetSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("snapshot_id",)
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    def __init__(self, snapshot_id: _Optional[str] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NetworkOverride(_message.Message):
    __slots__ = ("iface_id", "host_dev_name", "guest_mac")
    IFACE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_DEV_NAME_FIELD_NUMBER: _ClassVar[int]
    GUEST_MAC_FIELD_NUMBER: _ClassVar[int]
    iface_id: str
    host_dev_name: str
    guest_mac: str
    def __init__(self, iface_id: _Optional[str] = ..., host_dev_name: _Optional[str] = ..., guest_mac: _Optional[str] = ...) -> None: ...

class RestoreVmRequest(_message.Message):
    __slots__ = ("snapshot_id", "vm_id", "labels", "network_overrides", "vsock_uds_path", "resume_vm")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    VSOCK_UDS_PATH_FIELD_NUMBER: _ClassVar[int]
    RESUME_VM_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    vm_id: str
    labels: _containers.ScalarMap[str, str]
    network_overrides: _containers.RepeatedCompositeFieldContainer[NetworkOverride]
    vsock_uds_path: str
    resume_vm: bool
    def __init__(self, snapshot_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., network_overrides: _Optional[_Iterable[_Union[NetworkOverride, _Mapping]]] = ..., vsock_uds_path: _Optional[str] = ..., resume_vm: _Optional[bool] = ...) -> None: ...

class RestoreVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("hostname", "cpus", "memory_mib", "memory_reserved_mib", "memory_allocated_mib", "vcpus_allocated", "cpu_overcommit", "vms_by_state", "versions", "plugins", "revision")
    class VmsByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RESERVED_MIB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ALLOCATED_MIB_FIELD_NUMBER: _ClassVar[int]
    VCPUS_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    CPU_OVERCOMMIT_FIELD_NUMBER: _ClassVar[int]
    VMS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    cpus: int
    memory_mib: int
    memory_reserved_mib: int
    memory_allocated_mib: int
    vcpus_allocated: int
    cpu_overcommit: float
    vms_by_state: _containers.ScalarMap[str, int]
    versions: _containers.ScalarMap[str, str]
    plugins: _containers.RepeatedCompositeFieldContainer[Plugin]
    revision: int
    def __init__(self, hostname: _Optional[str] = ..., cpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., memory_reserved_mib: _Optional[int] = ..., memory_allocated_mib: _Optional[int] = ..., vcpus_allocated: _Optional[int] = ..., cpu_overcommit: _Optional[float] = ..., vms_by_state: _Optional[_Mapping[str, int]] = ..., versions: _Optional[_Mapping[str, str]] = ..., plugins: _Optional[_Iterable[_Union[Plugin, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class Plugin(_message.Message):
    __slots__ = ("name", "distribution", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    distribution: str
    version: str
    def __init__(self, name: _Optional[str] = ..., distribution: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...
