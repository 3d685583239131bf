"""Outband: build, launch, verify and destroy disposable Matrix appliances."""
