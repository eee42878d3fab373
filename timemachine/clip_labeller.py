"""Is this animal young?  Zero-shot answers from CLIP (open-clip-torch), as a labeller for discovery and scores.

    labeller = ClipLabeller(weights_path, species="dog", breed="shiba inu")
    p_young = labeller(images)          # uint8 [N, H, W, 3] -> float64 [N] in [0, 1], NaN = another breed

Zero-shot classification as in Radford et al. (2021): each class is a *prompt ensemble* (:data:`PROMPTS`: e.g.
'a photo of a puppy.', 'a close-up photo of a puppy's face.' against the same for an adult dog), whose text
embeddings are normalised, averaged and normalised again; an image's class probabilities are the softmax of
CLIP's logit scale times the cosine similarities.  ``P(young)`` is the young class's probability.  With a
``breed``, every image is also classified among the common breeds of its species (:data:`BREEDS`, prompt
'a photo of a {breed}, a type of dog.'), and images that CLIP does not assign to that breed get NaN (no label).

Images are resized to the network's input (224 px) with antialiased bicubic interpolation and normalised with
CLIP's mean and standard deviation; they are expected square (the generator's), as CLIP's own centre crop
would leave them.

Weights (:func:`resolve_clip_weights`): a ``.safetensors`` state dict of the :data:`ARCHITECTURE` model (the
zoo's ``clip-vit-b-32``, LAION-2B, MIT; downloaded, verified and recorded like the generators), read with
safetensors (no pickle), every tensor name and shape checked.  ``'random'`` builds a randomly initialised
network instead: for tests and benchmarks only, asked for by name (``TIMEMACHINE_CLIP_WEIGHTS=random``, which
the faces read), with a :class:`~timemachine.perceptual.RandomWeightsWarning`; nothing ever falls back to it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import warnings
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from timemachine.errors import AgeVectorError, WeightsError, first_line, printable, quoted
from timemachine.perceptual import RandomWeightsWarning
from timemachine.settings import MAX_BATCH, check_int

if TYPE_CHECKING:
    from timemachine.zoo import Zoo

RANDOM = "random"
#: The open_clip architecture of the zoo's weights.
ARCHITECTURE = "ViT-B-32"
#: The zoo entry of its weights (weights/manifest.json).
ZOO_NAME = "clip-vit-b-32"
SPECIES = ("dog", "cat", "wild")
#: Prompt ensembles per species: (young, adult).
PROMPTS: dict[str, dict[str, list[str]]] = {
    "dog": {
        "young": ["a photo of a puppy.", "a close-up photo of a puppy's face.", "a photo of a young puppy.",
                  "a photo of a baby dog."],
        "adult": ["a photo of an adult dog.", "a close-up photo of an adult dog's face.",
                  "a photo of a fully grown dog.", "a photo of a grown-up dog."],
    },
    "cat": {
        "young": ["a photo of a kitten.", "a close-up photo of a kitten's face.", "a photo of a young kitten.",
                  "a photo of a baby cat."],
        "adult": ["a photo of an adult cat.", "a close-up photo of an adult cat's face.",
                  "a photo of a fully grown cat.", "a photo of a grown-up cat."],
    },
    "wild": {
        "young": ["a photo of a cub.", "a close-up photo of a young animal's face.", "a photo of a lion cub.",
                  "a photo of a tiger cub.", "a photo of a fox cub.", "a photo of a wolf pup."],
        "adult": ["a photo of an adult wild animal.", "a close-up photo of an adult animal's face.",
                  "a photo of an adult lion.", "a photo of an adult tiger.", "a photo of an adult fox.",
                  "a photo of an adult wolf."],
    },
}
#: Common breeds (for 'wild': kinds of animal) per species: the Oxford-IIIT Pet breeds and the most common
#: others (dogs, cats), the animals of AFHQ-wild (wild).
BREEDS: dict[str, list[str]] = {
    "dog": ["akita", "american bulldog", "american pit bull terrier", "australian shepherd", "basset hound",
            "beagle", "bernese mountain dog", "border collie", "boston terrier", "boxer",
            "cavalier king charles spaniel", "chihuahua", "corgi", "dachshund", "dalmatian", "doberman",
            "english cocker spaniel", "english setter", "french bulldog", "german shepherd",
            "german shorthaired pointer", "golden retriever", "great pyrenees", "havanese", "jack russell terrier",
            "japanese chin", "keeshond", "labrador retriever", "leonberger", "maltese", "miniature pinscher",
            "newfoundland", "pomeranian", "poodle", "pug", "rottweiler", "saint bernard", "samoyed",
            "scottish terrier", "shiba inu", "shih tzu", "siberian husky", "staffordshire bull terrier",
            "wheaten terrier", "yorkshire terrier"],
    "cat": ["abyssinian", "bengal", "birman", "bombay", "british shorthair", "egyptian mau", "maine coon",
            "norwegian forest cat", "persian", "ragdoll", "russian blue", "scottish fold", "siamese", "sphynx",
            "tabby"],
    "wild": ["cheetah", "fox", "jaguar", "leopard", "lion", "tiger", "wolf"],
}
BREED_TEMPLATES = {"dog": "a photo of a {}, a type of dog.", "cat": "a photo of a {}, a type of cat.",
                   "wild": "a photo of a {}, a wild animal."}
MAX_PROMPTS = 32
MAX_PROMPT_CHARS = 200
#: CLIP reads 77 tokens, two of which mark the start and the end.
MAX_PROMPT_TOKENS = 75
#: Largest weights file accepted (ViT-B/32 in float32 is about 605 MB).
MAX_WEIGHTS_BYTES = 2 * 1024 ** 3

_SPACES = re.compile(r"[\s_-]+")


def check_labeller_species(species: str) -> str:
    """``species`` if it is one of :data:`SPECIES`."""
    if species not in SPECIES:
        raise AgeVectorError(f"unknown species {quoted(species)}: use one of {', '.join(SPECIES)}")
    return species


def resolve_breed(species: str, breed: Optional[str]) -> Optional[str]:
    """The canonical name of ``breed`` among :data:`BREEDS` of ``species`` (case, spaces, '-' and '_' ignored);
    None stays None.  Unknown: one line listing the known ones."""
    check_labeller_species(species)
    if breed is None:
        return None
    wanted = _SPACES.sub(" ", str(breed)).strip().lower()
    for known in BREEDS[species]:
        if known == wanted:
            return known
    raise AgeVectorError(f"unknown {species} breed {quoted(breed, 60)}; known: {', '.join(BREEDS[species])}")


def check_prompts(prompts: Optional[Sequence[str]], side: str, species: str) -> list[str]:
    """The prompts of one side: the species' defaults when None, else 1-:data:`MAX_PROMPTS` lines of visible
    text of at most :data:`MAX_PROMPT_CHARS` characters each."""
    if prompts is None:
        return list(PROMPTS[check_labeller_species(species)][side])
    prompts = list(prompts)
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise AgeVectorError(f"give 1 to {MAX_PROMPTS} {side} prompts, not {len(prompts)}")
    out = []
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise AgeVectorError(f"a {side} prompt is empty: describe the picture, e.g. {PROMPTS['dog'][side][0]!r}")
        if len(prompt) > MAX_PROMPT_CHARS or not prompt.isprintable():
            raise AgeVectorError(f"the {side} prompt {quoted(prompt, 60)} is not one line of at most "
                                 f"{MAX_PROMPT_CHARS} printable characters")
        if len(_tokenizer().encode(prompt)) > MAX_PROMPT_TOKENS:
            raise AgeVectorError(f"the {side} prompt {quoted(prompt, 60)} is longer than CLIP reads "
                                 f"({MAX_PROMPT_TOKENS} tokens)")
        out.append(prompt.strip())
    return out


@functools.lru_cache(maxsize=2)
def _tokenizer(architecture: str = ARCHITECTURE):
    """open_clip's tokenizer of ``architecture`` (its BPE vocabulary ships with the package), built once."""
    try:
        import open_clip
    except ImportError:   # pragma: no cover - a dependency
        raise WeightsError("the CLIP labeller needs open-clip-torch: pip install open-clip-torch") from None
    return open_clip.get_tokenizer(architecture)


def resolve_clip_weights(choice: Optional[str], zoo: "Zoo", *, progress=None) -> str:
    """The CLIP weights to use: ``choice`` (a file path or 'random', e.g. from ``TIMEMACHINE_CLIP_WEIGHTS`` or
    an option, read by the face), else the zoo's :data:`ZOO_NAME`, verified, downloaded when allowed.

    Raises:
        WeightsError: a named file does not exist; offline (or unreachable) with nothing local: one sentence
        naming the URL and where to put the file by hand.
    """
    if choice is not None and str(choice).strip():
        choice = str(choice).strip()
        if choice == RANDOM:
            return RANDOM
        if not os.path.isfile(choice):
            raise WeightsError(f"CLIP weights file not found: {printable(choice)}")
        return choice
    return str(zoo.ensure(ZOO_NAME, progress=progress))


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning on the root logger when it builds a network without weights (we load ours)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logging.disable(previous)


def build_clip(architecture: str = ARCHITECTURE, weights: str = RANDOM) -> Any:
    """The open_clip model ``architecture`` (eval, no gradients) with ``weights``: 'random' (seeded, warns) or
    a ``.safetensors`` state dict (checked tensor by tensor).  An ``open_clip.CLIP`` or ``CustomTextCLIP``
    (``encode_image``, ``encode_text``, ``logit_scale``, ``visual.image_size``); typed Any because open_clip
    ships no type information."""
    try:
        import open_clip
    except ImportError:   # pragma: no cover - a dependency
        raise WeightsError("the CLIP labeller needs open-clip-torch: pip install open-clip-torch") from None
    if architecture not in open_clip.list_models():
        raise AgeVectorError(f"unknown CLIP architecture {quoted(architecture)}")
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(architecture, pretrained=None)
    if weights == RANDOM:
        warnings.warn("using a randomly initialised CLIP (TIMEMACHINE_CLIP_WEIGHTS=random): its young/adult labels "
                      "are meaningless; use this only for tests and benchmarks", RandomWeightsWarning, stacklevel=2)
    else:
        _load_weights(model, weights)
    return model.eval().requires_grad_(False)


def _load_weights(model: torch.nn.Module, path: str) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = printable(path)
    if not path.lower().endswith(".safetensors"):
        raise WeightsError(f"CLIP weights must be a .safetensors file (no pickles), not {where}")
    try:
        if os.path.getsize(path) > MAX_WEIGHTS_BYTES:
            raise WeightsError(f"{where} is too large to be CLIP {ARCHITECTURE} weights")
        state = load_file(path, device="cpu")
    except WeightsError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"cannot read CLIP weights from {where} ({first_line(exc)})") from None
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unknown or wrong:
        what = (f"missing {printable(missing[0])}" if missing else f"unknown {printable(unknown[0])}" if unknown
                else f"{printable(wrong[0])} has shape {list(state[wrong[0]].shape)}")
        raise WeightsError(f"{where} does not hold CLIP {ARCHITECTURE} weights ({what})")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightsError(f"{where}: tensor {printable(name)} holds NaN or infinite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


class ClipLabeller:
    """P(young) of images by zero-shot CLIP (see the module docstring); a discovery labeller.

    Args:
        weights:      'random' or a ``.safetensors`` path (see :func:`resolve_clip_weights`).
        species:      'dog', 'cat' or 'wild': the default prompts and the breed list.
        young, adult: prompt ensembles replacing the species' defaults.
        breed:        keep only images CLIP assigns to this breed (others: NaN); see :func:`resolve_breed`.
        architecture: the open_clip architecture the weights belong to.
        device:       where CLIP runs.
        batch_size:   images encoded together.
        weights_id:   what identifies the weights in cache keys (default: the file's name, size and time).

    Attributes:
        description, details, cache_key: what discovery records and caches labels under.
    """

    def __init__(self, weights: Union[str, os.PathLike] = RANDOM, *, species: str = "dog",
                 young: Optional[Sequence[str]] = None, adult: Optional[Sequence[str]] = None,
                 breed: Optional[str] = None, architecture: str = ARCHITECTURE,
                 device: Union[str, torch.device] = "cpu", batch_size: int = 32, weights_id: Optional[str] = None):

        self.species = check_labeller_species(species)
        self.prompts = {"young": check_prompts(young, "young", species),
                        "adult": check_prompts(adult, "adult", species)}
        self.breed = resolve_breed(species, breed)
        check_int("the CLIP batch size", batch_size, 1, MAX_BATCH, error=AgeVectorError)
        self.batch_size = int(batch_size)
        self.architecture = architecture
        self.weights = str(weights)
        self.device = torch.device(device)
        tokenizer = _tokenizer(architecture)
        self.model = build_clip(architecture, self.weights).to(self.device)
        self.image_size = int(np.atleast_1d(self.model.visual.image_size)[0])
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self._mean = torch.tensor(OPENAI_DATASET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(OPENAI_DATASET_STD, device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():
            young, adult = self.prompts["young"], self.prompts["adult"]
            texts = F.normalize(self.model.encode_text(tokenizer(young + adult).to(self.device)).float(), dim=-1)
            self._classes = F.normalize(torch.stack([texts[:len(young)].mean(0), texts[len(young):].mean(0)]), dim=-1)
            self._breeds = None
            if self.breed is not None:
                template = BREED_TEMPLATES[species]
                texts = self.model.encode_text(tokenizer([template.format(b) for b in BREEDS[species]])
                                               .to(self.device)).float()
                self._breeds = F.normalize(texts, dim=-1)
                self._breed_index = BREEDS[species].index(self.breed)
            self._scale = float(self.model.logit_scale.exp())
        if weights_id is None:
            if self.weights == RANDOM:
                weights_id = RANDOM
            else:
                stat = os.stat(self.weights)
                weights_id = f"{os.path.basename(self.weights)}:{stat.st_size}:{stat.st_mtime_ns}"
        source = "random weights" if self.weights == RANDOM else os.path.basename(self.weights)
        self.details: dict[str, Any] = {"clip_model": f"{architecture} ({source})", "prompts": self.prompts,
                                        "species": species, "breed": self.breed}
        self.description = f"CLIP {architecture} zero-shot" + (f", breed {self.breed}" if self.breed else "")
        self.cache_key = hashlib.sha256(json.dumps({"architecture": architecture, "weights": weights_id,
                                                    "prompts": self.prompts, "breed": self.breed,
                                                    "species": species}, sort_keys=True).encode()).hexdigest()

    def image_features(self, images: np.ndarray) -> torch.Tensor:
        """Unit image embeddings [N, D] of uint8 images [N, H, W, 3]."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError("images must be uint8 [N, H, W, 3]")
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size])).to(self.device)
                x = x.permute(0, 3, 1, 2).float() / 255
                if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
                    x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                                      align_corners=False).clamp(0, 1)
                out.append(F.normalize(self.model.encode_image((x - self._mean) / self._std).float(), dim=-1))
        return torch.cat(out)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """P(young) float64 [N] in [0, 1]; NaN for images not of the requested breed."""
        features = self.image_features(images)
        p = torch.softmax(self._scale * features @ self._classes.T, dim=-1)[:, 0].double().cpu().numpy()
        if self._breeds is not None:
            breed = (features @ self._breeds.T).argmax(dim=-1).cpu().numpy()
            p = np.where(breed == self._breed_index, p, np.nan)
        return p
