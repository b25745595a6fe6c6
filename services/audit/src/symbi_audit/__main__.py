from symbi_audit.main import main

if __name__ == "__main__":
    main()
