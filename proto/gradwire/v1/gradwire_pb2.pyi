import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    INT64: _ClassVar[DType]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARRAYS: _ClassVar[ExportFormat]
    ONNX: _ClassVar[ExportFormat]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT64: DType
INT64: DType
ARRAYS: ExportFormat
ONNX: ExportFormat

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DenseLayer(_message.Message):
    __slots__ = ("units", "activation", "init")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    units: int
    activation: str
    init: str
    def __init__(self, units: _Optional[int] = ..., activation: _Optional[str] = ..., init: _Optional[str] = ...) -> None: ...

class BatchNormLayer(_message.Message):
    __slots__ = ("activation", "momentum", "epsilon")
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    activation: str
    momentum: float
    epsilon: float
    def __init__(self, activation: _Optional[str] = ..., momentum: _Optional[float] = ..., epsilon: _Optional[float] = ...) -> None: ...

class ResidualBlock(_message.Message):
    __slots__ = ("layers", "activation")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    activation: str
    def __init__(self, layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., activation: _Optional[str] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("dense", "batchnorm", "residual")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    BATCHNORM_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_FIELD_NUMBER: _ClassVar[int]
    dense: DenseLayer
    batchnorm: BatchNormLayer
    residual: ResidualBlock
    def __init__(self, dense: _Optional[_Union[DenseLayer, _Mapping]] = ..., batchnorm: _Optional[_Union[BatchNormLayer, _Mapping]] = ..., residual: _Optional[_Union[ResidualBlock, _Mapping]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("input_dim", "layers", "loss", "dtype", "seed")
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    input_dim: int
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    loss: str
    dtype: DType
    seed: int
    def __init__(self, input_dim: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., loss: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("model_id", "name", "spec", "version", "parameter_count", "classifier", "training", "created_at", "updated_at", "active_run_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    name: str
    spec: ModelSpec
    version: int
    parameter_count: int
    classifier: bool
    training: bool
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    active_run_id: str
    def __init__(self, model_id: _Optional[str] = ..., name: _Optional[str] = ..., spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., version: _Optional[int] = ..., parameter_count: _Optional[int] = ..., classifier: _Optional[bool] = ..., training: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active_run_id: _Optional[str] = ...) -> None: ...

class CreateModelRequest(_message.Message):
    __slots__ = ("name", "spec", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: ModelSpec
    request_id: str
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("model_id", "version", "format")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: int
    format: ExportFormat
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[_Union[ExportFormat, str]] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("version", "name", "shape", "dtype", "offset", "data", "weights_sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    offset: int
    data: bytes
    weights_sha256: str
    def __init__(self, version: _Optional[int] = ..., name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., weights_sha256: _Optional[str] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("name", "spec", "weights", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: ModelSpec
    weights: bytes
    request_id: str
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., weights: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class DatasetHeader(_message.Message):
    __slots__ = ("name", "dtype", "shape", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: DatasetHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[DatasetHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("dataset_id", "name", "dtype", "shape", "nbytes", "created_at")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    nbytes: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, dataset_id: _Optional[str] = ..., name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., nbytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OptimizerOptions(_message.Message):
    __slots__ = ("name", "learning_rate", "momentum", "beta1", "beta2", "epsilon", "rho", "weight_decay")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    name: str
    learning_rate: float
    momentum: float
    beta1: float
    beta2: float
    epsilon: float
    rho: float
    weight_decay: float
    def __init__(self, name: _Optional[str] = ..., learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., epsilon: _Optional[float] = ..., rho: _Optional[float] = ..., weight_decay: _Optional[float] = ...) -> None: ...

class ScheduleOptions(_message.Message):
    __slots__ = ("name", "step_size", "gamma", "t_max", "min_lr", "factor", "patience", "threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    T_MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_LR_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    step_size: int
    gamma: float
    t_max: int
    min_lr: float
    factor: float
    patience: int
    threshold: float
    def __init__(self, name: _Optional[str] = ..., step_size: _Optional[int] = ..., gamma: _Optional[float] = ..., t_max: _Optional[int] = ..., min_lr: _Optional[float] = ..., factor: _Optional[float] = ..., patience: _Optional[int] = ..., threshold: _Optional[float] = ...) -> None: ...

class TrainOptions(_message.Message):
    __slots__ = ("epochs", "batch_size", "shuffle", "seed", "optimizer", "schedule", "clip_norm", "loss_threshold", "validation_fraction", "stratify", "patience", "min_delta", "restore_best")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    LOSS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STRATIFY_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    RESTORE_BEST_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    shuffle: bool
    seed: int
    optimizer: OptimizerOptions
    schedule: ScheduleOptions
    clip_norm: float
    loss_threshold: float
    validation_fraction: float
    stratify: bool
    patience: int
    min_delta: float
    restore_best: bool
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., shuffle: _Optional[bool] = ..., seed: _Optional[int] = ..., optimizer: _Optional[_Union[OptimizerOptions, _Mapping]] = ..., schedule: _Optional[_Union[ScheduleOptions, _Mapping]] = ..., clip_norm: _Optional[float] = ..., loss_threshold: _Optional[float] = ..., validation_fraction: _Optional[float] = ..., stratify: _Optional[bool] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ..., restore_best: _Optional[bool] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("model_id", "inputs", "targets", "validation_inputs", "validation_targets", "options")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_INPUTS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_TARGETS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    inputs: Tensor
    targets: Tensor
    validation_inputs: Tensor
    validation_targets: Tensor
    options: TrainOptions
    def __init__(self, model_id: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., validation_inputs: _Optional[_Union[Tensor, _Mapping]] = ..., validation_targets: _Optional[_Union[Tensor, _Mapping]] = ..., options: _Optional[_Union[TrainOptions, _Mapping]] = ...) -> None: ...

class DataSource(_message.Message):
    __slots__ = ("dataset_id", "tensor")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    tensor: Tensor
    def __init__(self, dataset_id: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("model_id", "inputs", "targets", "validation_inputs", "validation_targets", "options", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_INPUTS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_TARGETS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    inputs: DataSource
    targets: DataSource
    validation_inputs: DataSource
    validation_targets: DataSource
    options: TrainOptions
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., inputs: _Optional[_Union[DataSource, _Mapping]] = ..., targets: _Optional[_Union[DataSource, _Mapping]] = ..., validation_inputs: _Optional[_Union[DataSource, _Mapping]] = ..., validation_targets: _Optional[_Union[DataSource, _Mapping]] = ..., options: _Optional[_Union[TrainOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("seed", "spec_seed", "datasets", "numpy_version", "gradwire_version", "weights_sha256", "base_version")
    class DatasetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEED_FIELD_NUMBER: _ClassVar[int]
    SPEC_SEED_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NUMPY_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRADWIRE_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    seed: int
    spec_seed: int
    datasets: _containers.ScalarMap[str, str]
    numpy_version: str
    gradwire_version: str
    weights_sha256: str
    base_version: int
    def __init__(self, seed: _Optional[int] = ..., spec_seed: _Optional[int] = ..., datasets: _Optional[_Mapping[str, str]] = ..., numpy_version: _Optional[str] = ..., gradwire_version: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., base_version: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "model_id", "status", "stop_reason", "error", "options", "datasets", "rows", "base_version", "version", "best_epoch", "best_loss", "epochs_done", "epochs_planned", "cancel_requested", "attempts", "created_at", "started_at", "finished_at", "receipt", "load_seconds", "train_seconds", "lease_expires_at")
    class DatasetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_DONE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_PLANNED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model_id: str
    status: str
    stop_reason: str
    error: str
    options: TrainOptions
    datasets: _containers.ScalarMap[str, str]
    rows: int
    base_version: int
    version: int
    best_epoch: int
    best_loss: float
    epochs_done: int
    epochs_planned: int
    cancel_requested: bool
    attempts: int
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    receipt: Receipt
    load_seconds: float
    train_seconds: float
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., model_id: _Optional[str] = ..., status: _Optional[str] = ..., stop_reason: _Optional[str] = ..., error: _Optional[str] = ..., options: _Optional[_Union[TrainOptions, _Mapping]] = ..., datasets: _Optional[_Mapping[str, str]] = ..., rows: _Optional[int] = ..., base_version: _Optional[int] = ..., version: _Optional[int] = ..., best_epoch: _Optional[int] = ..., best_loss: _Optional[float] = ..., epochs_done: _Optional[int] = ..., epochs_planned: _Optional[int] = ..., cancel_requested: _Optional[bool] = ..., attempts: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., load_seconds: _Optional[float] = ..., train_seconds: _Optional[float] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_epoch", "max_epochs_per_event")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    MAX_EPOCHS_PER_EVENT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_epoch: int
    max_epochs_per_event: int
    def __init__(self, run_id: _Optional[str] = ..., after_epoch: _Optional[int] = ..., max_epochs_per_event: _Optional[int] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("progress", "epochs", "result", "stalled")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STALLED_FIELD_NUMBER: _ClassVar[int]
    progress: EpochProgress
    epochs: EpochBatch
    result: Run
    stalled: Run
    def __init__(self, progress: _Optional[_Union[EpochProgress, _Mapping]] = ..., epochs: _Optional[_Union[EpochBatch, _Mapping]] = ..., result: _Optional[_Union[Run, _Mapping]] = ..., stalled: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class EpochBatch(_message.Message):
    __slots__ = ("epochs",)
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    epochs: _containers.RepeatedCompositeFieldContainer[EpochProgress]
    def __init__(self, epochs: _Optional[_Iterable[_Union[EpochProgress, _Mapping]]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("model_id", "statuses", "page_size", "page_token")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    statuses: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, model_id: _Optional[str] = ..., statuses: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class EpochProgress(_message.Message):
    __slots__ = ("epoch", "train_loss", "val_loss", "metric_name", "train_metric", "val_metric", "learning_rate", "grad_norms", "update_ratios", "elapsed_seconds", "eta_seconds", "epochs_planned", "samples")
    class GradNormsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class UpdateRatiosEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    METRIC_NAME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_METRIC_FIELD_NUMBER: _ClassVar[int]
    VAL_METRIC_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORMS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_RATIOS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_PLANNED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    train_loss: float
    val_loss: float
    metric_name: str
    train_metric: float
    val_metric: float
    learning_rate: float
    grad_norms: _containers.ScalarMap[str, float]
    update_ratios: _containers.ScalarMap[str, float]
    elapsed_seconds: float
    eta_seconds: float
    epochs_planned: int
    samples: int
    def __init__(self, epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., metric_name: _Optional[str] = ..., train_metric: _Optional[float] = ..., val_metric: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norms: _Optional[_Mapping[str, float]] = ..., update_ratios: _Optional[_Mapping[str, float]] = ..., elapsed_seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., epochs_planned: _Optional[int] = ..., samples: _Optional[int] = ...) -> None: ...

class TrainResult(_message.Message):
    __slots__ = ("run_id", "stop_reason", "best_epoch", "best_loss", "version", "epochs_run", "transfer_seconds", "train_seconds")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_RUN_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    stop_reason: str
    best_epoch: int
    best_loss: float
    version: int
    epochs_run: int
    transfer_seconds: float
    train_seconds: float
    def __init__(self, run_id: _Optional[str] = ..., stop_reason: _Optional[str] = ..., best_epoch: _Optional[int] = ..., best_loss: _Optional[float] = ..., version: _Optional[int] = ..., epochs_run: _Optional[int] = ..., transfer_seconds: _Optional[float] = ..., train_seconds: _Optional[float] = ...) -> None: ...

class TrainEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: EpochProgress
    result: TrainResult
    def __init__(self, progress: _Optional[_Union[EpochProgress, _Mapping]] = ..., result: _Optional[_Union[TrainResult, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model_id", "inputs", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    inputs: Tensor
    version: int
    def __init__(self, model_id: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("outputs", "labels", "version")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    outputs: Tensor
    labels: Tensor
    version: int
    def __init__(self, outputs: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class GetGradientsRequest(_message.Message):
    __slots__ = ("model_id", "inputs", "targets", "version", "numerical_check", "inference_mode")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUMERICAL_CHECK_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MODE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    inputs: Tensor
    targets: Tensor
    version: int
    numerical_check: bool
    inference_mode: bool
    def __init__(self, model_id: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., version: _Optional[int] = ..., numerical_check: _Optional[bool] = ..., inference_mode: _Optional[bool] = ...) -> None: ...

class GetGradientsResponse(_message.Message):
    __slots__ = ("loss", "gradients", "version", "max_relative_error")
    class MaxRelativeErrorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_RELATIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    loss: float
    gradients: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    version: int
    max_relative_error: _containers.ScalarMap[str, float]
    def __init__(self, loss: _Optional[float] = ..., gradients: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., version: _Optional[int] = ..., max_relative_error: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetTrainingHistoryRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class TrainingRun(_message.Message):
    __slots__ = ("run_id", "status", "stop_reason", "options", "base_version", "version", "best_epoch", "started_at", "finished_at", "epochs", "rows", "error")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: str
    stop_reason: str
    options: TrainOptions
    base_version: int
    version: int
    best_epoch: int
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    epochs: _containers.RepeatedCompositeFieldContainer[EpochProgress]
    rows: int
    error: str
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[str] = ..., stop_reason: _Optional[str] = ..., options: _Optional[_Union[TrainOptions, _Mapping]] = ..., base_version: _Optional[int] = ..., version: _Optional[int] = ..., best_epoch: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epochs: _Optional[_Iterable[_Union[EpochProgress, _Mapping]]] = ..., rows: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class GetTrainingHistoryResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[TrainingRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[TrainingRun, _Mapping]]] = ...) -> None: ...
