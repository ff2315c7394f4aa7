"""Contact sheets, HTML sheets and LoRA strength curves from a results DataFrame.

>>> from zlab.sheet import contact_sheet, read_sheet, strength_curve   # doctest: +SKIP
>>> contact_sheet(res.df, x="lora1_scale", y="seed").save("runs/tc/sheet.png")   # doctest: +SKIP
"""

from zlab.sheet.cells import VaryingColumnsError
from zlab.sheet.curves import StrengthCurve, strength_curve
from zlab.sheet.meta import read_sheet
from zlab.sheet.sheet import ContactSheet, contact_sheet, sheet_from_run_dir

__all__ = [
    "ContactSheet",
    "StrengthCurve",
    "VaryingColumnsError",
    "contact_sheet",
    "read_sheet",
    "sheet_from_run_dir",
    "strength_curve",
]
