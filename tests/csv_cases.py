"""Names a spreadsheet would run as formulas, and what every CSV export must write for each (literal, not from the code)."""

# (name, the cell a csv reader reads back): each dangerous first character gets a leading '.
FORMULA_CELLS = (
    ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
    ("+1+1", "'+1+1"),
    ("-1+1", "'-1+1"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    # Harmless where it is not first, and ordinary names stay as they are.
    ("a=1+1", "a=1+1"),
    ("ann@clinic", "ann@clinic"),
    ("Anne-Marie", "Anne-Marie"),
    ("ünï", "ünï"),
)
