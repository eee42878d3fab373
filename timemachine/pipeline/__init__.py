"""The pipeline: the one layer the faces (CLI, UI, worker) call.

A face reads the environment once (:class:`Environment`), loads a :class:`Pipeline` for a model, builds a
request from the settings dataclasses and its inputs, and calls one typed method per job::

    env = Environment.from_environ()
    pipe = Pipeline.load("afhqdog", env, progress=download_bar)
    photo = pipe.prepare_photo("dog.jpg")
    result = pipe.age_video(AgeVideoRequest(photo=photo, edit=AgeEdit("yorkshire"),
                                            outputs=VideoOutputs(directory="result/")), progress=on_progress)

Jobs: :meth:`Pipeline.project` (photos -> latents), :meth:`Pipeline.age_video` (the whole product),
:meth:`Pipeline.render` (a latent file -> video), :meth:`Pipeline.preview_strip`, :meth:`Pipeline.build_vector`.
Every job validates its request before any work, reports through one :class:`Progress` callback (which may
raise to stop it) and never prints.  Library errors (:mod:`timemachine.errors`) carry one sentence and an
optional remedy for the face to word.

Executors run jobs for the faces, in this process or on queue workers: a face submits a :class:`JobSpec`
(kind, request, model) to :func:`make_executor`'s executor and reads the returned :class:`JobHandle` (status,
queue position, progress, cancel, result).

Modules: ``requests`` (the request types), ``components`` (Pipeline, LoadedModel), ``projection``,
``videos``, ``vectors`` (the jobs), ``progress`` (the event), ``jobs`` (jobs as data, the pipeline cache),
``executor`` (the interface), ``executor_inprocess``, ``executor_celery`` (the implementations), ``codec``
(requests and results as JSON for the queue), ``export`` (a stored video copied into a directory).
"""

from timemachine.age import (
    MAX_STRENGTH,
    AgeVector,
    VectorLibrary,
    check_vector_name,
    describe_layer_groups,
    format_indices,
    layer_groups,
    normalize_layers,
    resolve_layers,
)
from timemachine.align import AlignmentRequest, request_from_options
from timemachine.env import Environment
from timemachine.images import DEFAULT_MAX_BYTES as MAX_PHOTO_BYTES
from timemachine.images import MIN_SIDE as MIN_PHOTO_SIDE
from timemachine.images import CropBox, parse_crop
from timemachine.perceptual import RandomWeightsWarning
from timemachine.pipeline.components import (
    LoadedModel,
    Pipeline,
    SharedNetworks,
    find_detector,
    load_clip_labeller,
    load_model,
    load_perceptual,
    open_zoo,
    perceptual_id,
)
from timemachine.pipeline.discovery import ZOO_SPECIES, DiscoverResult
from timemachine.pipeline.discovery import precheck as check_discovery
from timemachine.pipeline.executor import (
    BUG_MESSAGE,
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    Cancelled,
    Executor,
    JobCancelled,
    JobHandle,
    QueueFull,
    make_executor,
)
from timemachine.pipeline.executor_inprocess import InProcessExecutor
from timemachine.pipeline.export import export_video
from timemachine.pipeline.jobs import JOB_KINDS, JobKind, JobSpec, PipelineCache, register_job
from timemachine.pipeline.photos import load_photo, prepare_photo
from timemachine.pipeline.progress import VIDEO_STAGES, Progress, ProgressCallback, overall_fraction
from timemachine.pipeline.projection import PhotoProjection, write_projection
from timemachine.pipeline.requests import (
    AgeEdit,
    AgeVideoRequest,
    DiscoverRequest,
    Photo,
    PreviewStripRequest,
    ProjectionRequest,
    RenderRequest,
    VectorBuildRequest,
    VectorExample,
    VideoOutputs,
)
from timemachine.pipeline.scoring import summary as scores_summary
from timemachine.pipeline.vectors import BuiltExample, VectorBuildResult, load_vector, vector_library
from timemachine.pipeline.vectors import precheck as check_vector_build
from timemachine.pipeline.videos import STRIP_TIMES, AgeVideoResult, vector_direction
from timemachine.zoo import ProgressCallback as DownloadProgress
from timemachine.zoo import Zoo, ZooEntry, human_bytes

__all__ = [
    "Environment", "LoadedModel", "Pipeline", "SharedNetworks", "load_model", "load_perceptual",
    "load_clip_labeller", "perceptual_id",
    "Progress", "ProgressCallback", "VIDEO_STAGES", "overall_fraction",
    "Photo", "ProjectionRequest", "AgeEdit", "VideoOutputs", "AgeVideoRequest", "RenderRequest", "VectorExample",
    "VectorBuildRequest", "PhotoProjection", "AgeVideoResult", "VectorBuildResult", "BuiltExample", "STRIP_TIMES",
    "write_projection", "CropBox", "parse_crop", "load_vector", "check_vector_build", "MAX_PHOTO_BYTES",
    "MIN_PHOTO_SIDE", "RandomWeightsWarning", "load_photo", "prepare_photo", "human_bytes", "vector_library",
    "AgeVector", "VectorLibrary", "MAX_STRENGTH", "DiscoverRequest", "DiscoverResult", "check_discovery",
    "ZOO_SPECIES", "vector_direction", "describe_layer_groups", "format_indices", "layer_groups", "resolve_layers",
    "normalize_layers", "check_vector_name", "open_zoo", "Zoo", "ZooEntry", "DownloadProgress", "PreviewStripRequest",
    "JobSpec", "JobKind", "JOB_KINDS", "register_job", "PipelineCache", "Executor", "JobHandle", "InProcessExecutor",
    "make_executor", "QueueFull", "Cancelled", "JobCancelled", "BUG_MESSAGE", "QUEUED", "RUNNING", "DONE", "FAILED",
    "CANCELLED", "FINISHED", "export_video", "AlignmentRequest", "request_from_options",
    "scores_summary", "find_detector",
]
