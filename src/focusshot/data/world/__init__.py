"""FocusWorld: procedurally generated scenes in which we know exactly which pixels decide the class.

No pretrained ViT or CLIP weights can be installed on our build machines, so focusshot brings its
own world. An *object class* is a combination of a shape, a colour and a surface pattern
(8 x 8 x 4 = 256 classes, see :class:`WorldClass`); a *scene* is a textured background with one
*target* object of the label class and optionally a few *distractor* objects of other classes,
which may partially occlude it. Every scene comes with the target's pixel mask, its box, the
distractors' classes and boxes, and a caption naming every object.

Everything is deterministic from a seed and needs no file: :func:`sample_scene` draws a
:class:`SceneSpec` (all that is needed to render one image) from a numpy ``Generator`` and
:func:`render_scene` turns it into pixels with numpy and PIL only (vectorised; thousands of
64 x 64 scenes per second on one core).

Class splits are fixed (they do not depend on the data seed): a quarter of the combinations is
held out as *novel* classes for few-shot and zero-shot evaluation and the rest are *base* classes
for pretraining. Every shape, colour and pattern value, and every pair of values except the
(shape, colour) pairs of the fine-grained block, still appears among base classes, so zero-shot
classification of novel classes tests compositional generalisation.

Suites (see :data:`SUITES`):

* ``world:single``: one object on a textured background, novel classes;
* ``world:clutter``: the target plus 1-4 distractors of other novel classes (often sharing a
  shape, colour or pattern with it), smaller objects, partial occlusion;
* ``world:fine``: one object, restricted to the *fine-grained block* of novel classes (two
  similar shapes x two similar colours x all patterns), where each class has five others one
  attribute away and only one pair in five differs in all three;
* ``world:base``: base classes, 0-4 distractors, for pretraining (captions name every object).

Materialised suites (:func:`build_world`, :func:`open_world`, and ``open_source("world:...")``)
are folders of PNG images, a ``<image>.mask.npy`` target mask beside each image, and a
``manifest.jsonl``; :func:`iter_batches` streams scenes from memory for pretraining.

The package, from the bottom: :mod:`~focusshot.data.world.classes` (the class universe and the
base/novel split), :mod:`~focusshot.data.world.draw` (scene specs and their pixels),
:mod:`~focusshot.data.world.suites` (suites, sampling scenes, streams) and
:mod:`~focusshot.data.world.materialise` (suites as folders, specs, the cache). It knows nothing of
models (``data`` never imports backbones) and nothing of :mod:`focusshot.data.sources`, which
opens ``world:`` specs through it.
"""

from focusshot.data.world.classes import (
    COLOURS,
    FINE_COLOURS,
    FINE_SHAPES,
    NOVEL_FRACTION,
    PATTERNS,
    SHAPES,
    SPLIT_SEED,
    WorldClass,
    all_classes,
    attribute_difference,
    base_classes,
    caption_vocabulary,
    class_by_name,
    fine_classes,
    novel_classes,
)
from focusshot.data.world.draw import (
    ObjectSpec,
    RenderedScene,
    SceneSpec,
    caption_for,
    render_scene,
    render_scene_full,
)
from focusshot.data.world.materialise import (
    GENERATOR_VERSION,
    SPEC_OPTIONS,
    build_world,
    mask_for,
    open_world,
    parse_world_spec,
    with_distractor_boxes,
    world_cache_root,
)
from focusshot.data.world.suites import (
    SUITES,
    SuiteConfig,
    iter_batches,
    resolve_suite,
    sample_scene,
    scene_seed,
    suite_classes,
)

__all__ = [
    "COLOURS",
    "FINE_COLOURS",
    "FINE_SHAPES",
    "GENERATOR_VERSION",
    "NOVEL_FRACTION",
    "PATTERNS",
    "SHAPES",
    "SPEC_OPTIONS",
    "SPLIT_SEED",
    "SUITES",
    "ObjectSpec",
    "RenderedScene",
    "SceneSpec",
    "SuiteConfig",
    "WorldClass",
    "all_classes",
    "attribute_difference",
    "base_classes",
    "build_world",
    "caption_for",
    "caption_vocabulary",
    "class_by_name",
    "fine_classes",
    "iter_batches",
    "mask_for",
    "novel_classes",
    "open_world",
    "parse_world_spec",
    "render_scene",
    "render_scene_full",
    "resolve_suite",
    "sample_scene",
    "scene_seed",
    "suite_classes",
    "with_distractor_boxes",
    "world_cache_root",
]
