"""``python -m pclc.audit``: see :mod:`pclc.audit.cli`."""

if __name__ == "__main__":
    from pclc.audit.cli import main

    main()
