"""Hospital integration: films in from a PACS, results back into the same study.

- `dicomweb`: the PACS's DICOMweb API (QIDO-RS search, WADO-RS retrieve of the stored bytes, STOW-RS).
- `intake`: one DICOM instance → checked (SOP class, transfer syntax, view, pixel module) → the normal
  prediction path → remembered in `pacs_instances`, results queued in the outbox. Shared by both ways
  in: `sync` (cxr-review pacs-sync polls the PACS) and `listener` (cxr-review dicom-listener, a C-STORE
  SCP for PACSes that push).
- `outbox`: `dicom_exports` rows (SR, SEG, SC; an amended SR after each verdict) built with
  app.dicom_out and pushed by STOW-RS or C-STORE (`senders`), retried a bounded number of times.
"""
