"""HTML reports, built from Jinja2 templates (autoescaped) on one base layout.

Templates (package data, ``brats_pipeline/reports/templates``):

* ``base.html.j2`` — the page: ``<head>`` with the shared style sheet, the title, the notes
  (plain-text paragraphs), a ``content`` block and a ``footer`` block. A page has no scripts,
  fonts or other external resources, so it opens offline.
* ``macros.html.j2`` — ``figure(image)``, ``images(list)`` and ``table(header, rows)``, shared by
  every report.
* ``evaluation.html.j2`` — ``brats-evaluate --report`` and ``brats-demo``
  (:func:`brats_pipeline.reports.evaluation.write_report`).
* ``radiogenomics.html.j2`` — ``brats-radiogenomics`` (:mod:`brats_pipeline.radiogenomics.report`).
* ``comparison.html.j2`` — evaluations side by side, e.g. internal (cross-validation) vs external
  cohort (``brats-evaluate --external-pred/--external-truth``;
  :func:`brats_pipeline.reports.comparison.write_comparison`).

A new report (e.g. a study's comparison of arms) is one more template that starts with
``{% extends "base.html.j2" %}``, fills ``{% block content %}`` and imports the macros; write it
with :func:`write_html`. Every value is escaped on output; images are ``{"src", "alt"}`` dicts made
by :func:`image` (a relative, URL-quoted link or, with ``embed``, a ``data:`` URI).
"""

from brats_pipeline.reports.render import environment, image, image_src, number, render_template, write_html

__all__ = ["environment", "image", "image_src", "number", "render_template", "write_html"]
