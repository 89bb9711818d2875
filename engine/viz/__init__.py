"""What a person looks at: overlays, figures and movies (``rendering``), the self-contained ``report.html`` viewer
(``report``, with its script and style as package files under ``assets/``)."""
