"""The composition root: which parts make the appliance and how they are wired (see app.py)."""
