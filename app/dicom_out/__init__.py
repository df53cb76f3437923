"""DICOM objects of cxr-review's results, for a PACS and any DICOM viewer (highdicom builds them).

For one stored result: a TID 1500 Comprehensive SR (`sr.build_sr`), a binary Segmentation of the lung
mask (`seg.build_seg`) and a Secondary Capture of the predicted class's heat-map overlay with its
legend and the burned-in disclaimer (`sc.build_sc`). Each goes into the source film's study as a new
series with fresh UIDs and references the source instance. `content` holds the plain inputs
(`SourceFilm`, `AiResult`, `Review`); no module here touches the database.
"""
