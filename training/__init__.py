"""Training with Lightning: ``vit-train`` (:mod:`training.train`). Images: the classifier
(:mod:`training.image_classifier`), ImageFolder data (:mod:`training.image_data`,
:mod:`training.image_cache`, :mod:`training.augment`). Text: the translator
(:mod:`training.translation`) and parallel text (:mod:`training.text_data`). Shared:
optimizer groups and schedules (:mod:`training.optim`), callbacks (:mod:`training.callbacks`)."""
