"""Age vectors: directions in a generator's latent space that turn adults into puppies.

One job per module:

* :mod:`~timemachine.age.layers`  which rows of a latent an edit touches (groups, selections, masks);
* :mod:`~timemachine.age.vector`  :class:`AgeVector` (direction, binding to its model, defaults) and its checks;
* :mod:`~timemachine.age.build`   directions from latents: ``pair``, ``mean``, ``linear`` (the classifier);
* :mod:`~timemachine.age.store`   the safetensors file format, the locked :class:`VectorLibrary`, the built-in
  vectors and the per-model default vectors.

The package imports nothing above the library layer: building a vector from photos (projecting them first)
is the pipeline's job (:mod:`timemachine.vector_builds`), discovering one from a generator's own samples is
:mod:`timemachine.discover`'s.  The names below are re-exported for convenience.
"""

from timemachine.age.build import (
    BUILD_METHODS,
    CLASSIFIER_C,
    build_vector,
    check_counts,
    compute_direction,
    heldout_accuracy,
)
from timemachine.age.layers import (
    LAYER_GROUPS,
    describe_layer_groups,
    format_indices,
    layer_groups,
    layer_mask,
    layer_resolution,
    normalize_layers,
    resolve_layers,
)
from timemachine.age.store import (
    BUILTIN_DEFAULTS,
    FILE_FORMAT,
    FILE_FORMAT_VERSION,
    MAX_FILE_BYTES,
    TENSOR_NAME,
    LibraryEntry,
    VectorLibrary,
    binding_keys,
    builtin_names,
    load_builtin,
    load_vector_file,
    save_vector_file,
    vector_to_bytes,
)
from timemachine.age.vector import (
    FILE_SUFFIX,
    MAX_DETAILS_BYTES,
    MAX_DETAILS_DEPTH,
    MAX_DIRECTION_ABS,
    MAX_NUM_WS,
    MAX_SHORT_TEXT,
    MAX_TEXT,
    MAX_W_DIM,
    METHODS,
    AgeVector,
    check_binding,
    check_details,
    check_direction,
    check_notes,
    check_species,
    check_strength,
    check_vector_name,
)
from timemachine.errors import AgeVectorError
from timemachine.settings import MAX_STRENGTH

__all__ = [
    "AgeVector", "AgeVectorError", "BUILD_METHODS", "BUILTIN_DEFAULTS", "CLASSIFIER_C", "FILE_FORMAT",
    "FILE_FORMAT_VERSION", "FILE_SUFFIX", "LAYER_GROUPS", "LibraryEntry", "MAX_DETAILS_BYTES", "MAX_DETAILS_DEPTH",
    "MAX_DIRECTION_ABS", "MAX_FILE_BYTES", "MAX_NUM_WS", "MAX_SHORT_TEXT", "MAX_STRENGTH", "MAX_TEXT", "MAX_W_DIM",
    "METHODS", "TENSOR_NAME", "VectorLibrary", "binding_keys", "build_vector", "builtin_names", "check_binding",
    "check_counts", "check_details", "check_direction", "check_notes", "check_species", "check_strength",
    "check_vector_name", "compute_direction", "describe_layer_groups", "format_indices", "heldout_accuracy",
    "layer_groups", "layer_mask", "layer_resolution", "load_builtin", "load_vector_file", "normalize_layers",
    "resolve_layers", "save_vector_file", "vector_to_bytes",
]
