from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Output(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_UNSPECIFIED: _ClassVar[Output]
    OUTPUT_OUTPUTS: _ClassVar[Output]
    OUTPUT_HIDDEN: _ClassVar[Output]
    OUTPUT_ATTENTION: _ClassVar[Output]
    OUTPUT_LOGITS: _ClassVar[Output]
    OUTPUT_STEP_LOGITS: _ClassVar[Output]
OUTPUT_UNSPECIFIED: Output
OUTPUT_OUTPUTS: Output
OUTPUT_HIDDEN: Output
OUTPUT_ATTENTION: Output
OUTPUT_LOGITS: Output
OUTPUT_STEP_LOGITS: Output

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[str]
    description: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ...) -> None: ...

class ParitySummary(_message.Message):
    __slots__ = ("passed", "max_abs_error", "atol", "rtol", "cases")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    CASES_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    max_abs_error: float
    atol: float
    rtol: float
    cases: int
    def __init__(self, passed: _Optional[bool] = ..., max_abs_error: _Optional[float] = ..., atol: _Optional[float] = ..., rtol: _Optional[float] = ..., cases: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "versions", "description", "cell", "bidirectional", "layers", "hidden_size", "input_features", "attention", "streaming", "class_labels", "inputs", "outputs", "parity", "test_accuracy", "precision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    versions: _containers.RepeatedScalarFieldContainer[int]
    description: str
    cell: str
    bidirectional: bool
    layers: int
    hidden_size: int
    input_features: int
    attention: str
    streaming: bool
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    parity: ParitySummary
    test_accuracy: float
    precision: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[int]] = ..., description: _Optional[str] = ..., cell: _Optional[str] = ..., bidirectional: _Optional[bool] = ..., layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., input_features: _Optional[int] = ..., attention: _Optional[str] = ..., streaming: _Optional[bool] = ..., class_labels: _Optional[_Iterable[str]] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., parity: _Optional[_Union[ParitySummary, _Mapping]] = ..., test_accuracy: _Optional[float] = ..., precision: _Optional[str] = ...) -> None: ...

class Sequence(_message.Message):
    __slots__ = ("id", "steps")
    ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    steps: Tensor
    def __init__(self, id: _Optional[str] = ..., steps: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "version", "sequences", "outputs", "packed", "packed_results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    PACKED_RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    outputs: _containers.RepeatedScalarFieldContainer[Output]
    packed: PackedSequences
    packed_results: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[Output, str]]] = ..., packed: _Optional[_Union[PackedSequences, _Mapping]] = ..., packed_results: _Optional[bool] = ...) -> None: ...

class PackedSequences(_message.Message):
    __slots__ = ("steps", "lengths", "ids")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    steps: Tensor
    lengths: _containers.RepeatedScalarFieldContainer[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, steps: _Optional[_Union[Tensor, _Mapping]] = ..., lengths: _Optional[_Iterable[int]] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PackedResults(_message.Message):
    __slots__ = ("ids", "lengths", "labels", "label_indices", "probabilities", "logits", "outputs", "h_n", "c_n", "attention", "context", "step_logits")
    IDS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_INDICES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    H_N_FIELD_NUMBER: _ClassVar[int]
    C_N_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_LOGITS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    label_indices: _containers.RepeatedScalarFieldContainer[int]
    probabilities: Tensor
    logits: Tensor
    outputs: Tensor
    h_n: Tensor
    c_n: Tensor
    attention: Tensor
    context: Tensor
    step_logits: Tensor
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., lengths: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[str]] = ..., label_indices: _Optional[_Iterable[int]] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., outputs: _Optional[_Union[Tensor, _Mapping]] = ..., h_n: _Optional[_Union[Tensor, _Mapping]] = ..., c_n: _Optional[_Union[Tensor, _Mapping]] = ..., attention: _Optional[_Union[Tensor, _Mapping]] = ..., context: _Optional[_Union[Tensor, _Mapping]] = ..., step_logits: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SequenceResult(_message.Message):
    __slots__ = ("id", "label", "label_index", "probabilities", "logits", "outputs", "h_n", "c_n", "attention", "context", "step_logits")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    H_N_FIELD_NUMBER: _ClassVar[int]
    C_N_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_LOGITS_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: str
    label_index: int
    probabilities: Tensor
    logits: Tensor
    outputs: Tensor
    h_n: Tensor
    c_n: Tensor
    attention: Tensor
    context: Tensor
    step_logits: Tensor
    def __init__(self, id: _Optional[str] = ..., label: _Optional[str] = ..., label_index: _Optional[int] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., outputs: _Optional[_Union[Tensor, _Mapping]] = ..., h_n: _Optional[_Union[Tensor, _Mapping]] = ..., c_n: _Optional[_Union[Tensor, _Mapping]] = ..., attention: _Optional[_Union[Tensor, _Mapping]] = ..., context: _Optional[_Union[Tensor, _Mapping]] = ..., step_logits: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("model", "version", "results", "packed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    results: _containers.RepeatedCompositeFieldContainer[SequenceResult]
    packed: PackedResults
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[SequenceResult, _Mapping]]] = ..., packed: _Optional[_Union[PackedResults, _Mapping]] = ...) -> None: ...

class EncodeStreamRequest(_message.Message):
    __slots__ = ("request_id", "request")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    request: EncodeRequest
    def __init__(self, request_id: _Optional[str] = ..., request: _Optional[_Union[EncodeRequest, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EncodeStreamResponse(_message.Message):
    __slots__ = ("request_id", "response", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: EncodeResponse
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[EncodeResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class State(_message.Message):
    __slots__ = ("model", "version", "h", "c", "steps_seen")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    H_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    STEPS_SEEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    h: Tensor
    c: Tensor
    steps_seen: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., h: _Optional[_Union[Tensor, _Mapping]] = ..., c: _Optional[_Union[Tensor, _Mapping]] = ..., steps_seen: _Optional[int] = ...) -> None: ...

class StreamSequenceRequest(_message.Message):
    __slots__ = ("model", "version", "steps", "initial_state", "end", "outputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    steps: Tensor
    initial_state: State
    end: bool
    outputs: _containers.RepeatedScalarFieldContainer[Output]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., steps: _Optional[_Union[Tensor, _Mapping]] = ..., initial_state: _Optional[_Union[State, _Mapping]] = ..., end: _Optional[bool] = ..., outputs: _Optional[_Iterable[_Union[Output, str]]] = ...) -> None: ...

class StreamSequenceResponse(_message.Message):
    __slots__ = ("result", "state", "steps_seen", "final")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_SEEN_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    result: SequenceResult
    state: State
    steps_seen: int
    final: bool
    def __init__(self, result: _Optional[_Union[SequenceResult, _Mapping]] = ..., state: _Optional[_Union[State, _Mapping]] = ..., steps_seen: _Optional[int] = ..., final: _Optional[bool] = ...) -> None: ...
