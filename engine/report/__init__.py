"""The numbers a referral program is run by (the ``report`` command reads them)."""
