"""Radiogenomics of glioma: shape features of tumour masks tested against genomic subtypes.

After Mazurowski et al. (J Neuro-Oncology 2017) and Buda, Saha & Mazurowski (Computers in
Biology and Medicine 2019): per patient, the bounding ellipsoid volume ratio (BEVR), margin
fluctuation (MF), angular standard deviation (ASD) and a few well-known descriptors
(:mod:`.features`, :mod:`.margin`, :mod:`.ellipsoid`); Fisher's exact test of each feature,
split at its median, against each subtype column of a clinical table, with Bonferroni and Holm
adjustment (:mod:`.stats`); tables, figures and pages (:mod:`.report`, :mod:`.figures`); the
features of predicted masks against those of manual masks (:mod:`.compare`). The whole run:
:func:`.analysis.run_radiogenomics` (CLI ``brats-radiogenomics``).
"""
